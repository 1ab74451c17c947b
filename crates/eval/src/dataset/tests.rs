//! Reader tests on the real data, the invented fixtures in testdata/ and malformed files.
