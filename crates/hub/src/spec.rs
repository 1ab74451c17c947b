//! `REPO[:BRANCH]` strings, as typed into huggingface-cli or text-generation-webui, parsed and validated.

use crate::error::{HubError, Result};
use std::fmt;

/// Branch used when neither `:BRANCH` nor `--revision` is given, as on the Hub.
pub const DEFAULT_REVISION: &str = "main";

/// Longest repo id the Hub accepts (huggingface_hub's `validate_repo_id`).
const MAX_REPO_ID_LEN: usize = 96;

/// A model repository on the Hub and the revision (branch, tag or commit) to fetch from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoSpec {
    /// `org/name` (or a legacy un-namespaced `name` such as `gpt2`).
    pub repo_id: String,
    /// Branch, tag, `refs/pr/N`, or a 40-hex commit sha.
    pub revision: String,
}

impl RepoSpec {
    /// Parses `org/name` or `org/name:branch`; `revision` (the `--revision` flag) overrides the
    /// `:branch` suffix, as huggingface-cli's `--revision` does.
    pub fn parse(input: &str, revision: Option<&str>) -> Result<Self> {
        let input = input.trim();
        let (repo_id, branch) = match input.split_once(':') {
            Some((repo, branch)) => (repo, Some(branch)),
            None => (input, None),
        };
        validate_repo_id(repo_id)?;
        let revision = match (revision, branch) {
            (Some(rev), _) => rev,
            (None, Some(branch)) => branch,
            (None, None) => DEFAULT_REVISION,
        };
        validate_revision(revision)?;
        Ok(RepoSpec {
            repo_id: repo_id.to_string(),
            revision: revision.to_string(),
        })
    }

    /// True when the revision names a commit, so no ref needs resolving.
    pub fn is_commit(&self) -> bool {
        is_commit_sha(&self.revision)
    }

    /// Whether a `--model` value that is not an existing path is meant as a Hub repo: a valid
    /// `org/name[:branch]`. Un-namespaced ids (`gpt2`) and names of weight files are left out,
    /// so a mistyped `model.gguf` gets "file not found", not a Hub request.
    pub fn looks_like_repo(input: &str) -> bool {
        let repo = input.split(':').next().unwrap_or_default();
        let is_file_name = [".gguf", ".safetensors", ".bin"]
            .iter()
            .any(|ext| repo.ends_with(ext));
        repo.contains('/') && !is_file_name && RepoSpec::parse(input, None).is_ok()
    }
}

impl fmt::Display for RepoSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.repo_id, self.revision)
    }
}

/// A full git commit sha: 40 lowercase hex digits.
pub fn is_commit_sha(s: &str) -> bool {
    s.len() == 40
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The rules of huggingface_hub's `validate_repo_id`, so we reject what the Hub would reject
/// before making a request, with a reason instead of a 404.
fn validate_repo_id(id: &str) -> Result<()> {
    let bad = |reason: &str| {
        Err(HubError::InvalidRepoId {
            input: id.to_string(),
            reason: reason.to_string(),
        })
    };
    if id.is_empty() {
        return bad("it is empty");
    }
    if id.len() > MAX_REPO_ID_LEN {
        return bad("it is longer than 96 characters");
    }
    let parts: Vec<&str> = id.split('/').collect();
    if parts.len() > 2 {
        return bad("it has more than one '/'");
    }
    for part in &parts {
        if part.is_empty() {
            return bad("the organisation or the name is empty");
        }
        if let Some(c) = part
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        {
            return bad(&format!(
                "'{c}' is not allowed (only letters, digits, '-', '_' and '.')"
            ));
        }
        let edge_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        if !edge_ok(part.chars().next()) || !edge_ok(part.chars().last()) {
            return bad("each part must start and end with a letter, a digit or '_'");
        }
    }
    if id.contains("--") || id.contains("..") {
        return bad("'--' and '..' are not allowed");
    }
    if id.ends_with(".git") {
        return bad("it cannot end with '.git'");
    }
    Ok(())
}

/// Revisions become URL path segments and cache paths (`refs/<branch>`), so refuse what could
/// escape the cache folder or could not be a git ref.
fn validate_revision(rev: &str) -> Result<()> {
    let bad = |reason: &str| {
        Err(HubError::InvalidRevision {
            input: rev.to_string(),
            reason: reason.to_string(),
        })
    };
    if rev.is_empty() {
        return bad("it is empty (write REPO:BRANCH or leave out the ':')");
    }
    if rev
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '\\')
    {
        return bad("it contains whitespace, a control character or '\\'");
    }
    if rev.starts_with('/')
        || rev.ends_with('/')
        || rev
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return bad("it has an empty, '.' or '..' path component");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_repo_and_branch() {
        let spec = RepoSpec::parse(
            "TheBloke/meditron-70B-GPTQ:gptq-4bit-128g-actorder_True",
            None,
        )
        .unwrap();
        assert_eq!(spec.repo_id, "TheBloke/meditron-70B-GPTQ");
        assert_eq!(spec.revision, "gptq-4bit-128g-actorder_True");
        assert_eq!(
            spec.to_string(),
            "TheBloke/meditron-70B-GPTQ:gptq-4bit-128g-actorder_True"
        );
    }

    #[test]
    fn defaults_to_main_and_revision_flag_wins() {
        assert_eq!(
            RepoSpec::parse("epfl-llm/meditron-7b", None)
                .unwrap()
                .revision,
            "main"
        );
        let spec = RepoSpec::parse("org/name:branch", Some("refs/pr/1")).unwrap();
        assert_eq!(spec.revision, "refs/pr/1");
        assert!(
            RepoSpec::parse("gpt2", None).is_ok(),
            "legacy un-namespaced ids are valid"
        );
    }

    #[test]
    fn recognises_commit_shas() {
        let sha = "0123456789abcdef0123456789abcdef01234567";
        assert!(RepoSpec::parse(&format!("org/name:{sha}"), None)
            .unwrap()
            .is_commit());
        assert!(!RepoSpec::parse("org/name:main", None).unwrap().is_commit());
        assert!(!is_commit_sha("0123456789ABCDEF0123456789ABCDEF01234567"));
    }

    #[test]
    fn rejects_bad_repo_ids_with_a_reason() {
        for (input, reason) in [
            ("", "empty"),
            ("a/b/c", "more than one '/'"),
            ("org/", "empty"),
            ("org/na me", "' ' is not allowed"),
            ("./model", "must start and end"),
            ("org/-name", "must start and end"),
            ("org/na--me", "'--'"),
            ("org/na..me", "'..'"),
            ("org/name.git", ".git"),
        ] {
            let err = RepoSpec::parse(input, None).unwrap_err().to_string();
            assert!(err.contains(reason), "{input:?}: {err}");
            assert!(
                err.starts_with(&format!(
                    "invalid repo id '{}'",
                    input.split(':').next().unwrap()
                )),
                "{err}"
            );
        }
        let long = format!("org/{}", "x".repeat(95));
        assert!(RepoSpec::parse(&long, None)
            .unwrap_err()
            .to_string()
            .contains("longer than 96"));
    }

    #[test]
    fn rejects_bad_revisions() {
        for input in [
            "org/name:",
            "org/name:../x",
            "org/name:a b",
            "org/name:/abs",
            "org/name:a//b",
        ] {
            let err = RepoSpec::parse(input, None).unwrap_err().to_string();
            assert!(err.starts_with("invalid revision"), "{input:?}: {err}");
        }
        assert!(!RepoSpec::looks_like_repo("/models/llama/"));
        assert!(!RepoSpec::looks_like_repo("model.gguf"));
        assert!(!RepoSpec::looks_like_repo("models/model.gguf"));
        assert!(RepoSpec::looks_like_repo(
            "test-org/tiny-model:gptq-4bit-128g"
        ));
    }
}
