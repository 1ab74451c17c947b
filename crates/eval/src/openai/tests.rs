//! Tests of the OpenAI backend against a fake server on 127.0.0.1.
