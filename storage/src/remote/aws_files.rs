//! The AWS shared files: `~/.aws/credentials` and `~/.aws/config` (or
//! `AWS_SHARED_CREDENTIALS_FILE`, `AWS_CONFIG_FILE`), profile `AWS_PROFILE` or
//! `default`, read as the AWS CLI reads them, for what `object_store` does not
//! read itself (it reads the environment and instance metadata only).
//!
//! Settings taken from the profile: `aws_access_key_id`,
//! `aws_secret_access_key`, `aws_session_token`, `region`, `endpoint_url`. The
//! environment wins over the files, and the credentials file over the config
//! file. A profile that names credentials Spate cannot obtain (`role_arn`,
//! `credential_process`, `sso_*`, `web_identity_token_file`) without static keys
//! is an error that says so; a missing file is not (an explicitly named
//! profile that is in neither file is).
//!
//! Secrets never leave this module except into the S3 client's builder: no
//! `Debug` prints them and no error names a value, only keys and paths.

use object_store::aws::AmazonS3Builder;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The settings of one profile (values may be secret).
#[derive(Default, PartialEq, Eq)]
pub(crate) struct Profile {
    settings: BTreeMap<String, String>,
}

impl std::fmt::Debug for Profile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Keys only: the values may be secrets.
        f.debug_set().entries(self.settings.keys()).finish()
    }
}

/// Settings that name a way to obtain credentials this module does not follow.
const UNSUPPORTED: [&str; 5] = [
    "role_arn",
    "credential_process",
    "sso_session",
    "sso_start_url",
    "web_identity_token_file",
];

/// Parses an INI file of the AWS form: the `key = value` lines of section
/// `wanted` (nested, indented sub-settings skipped).
fn section(text: &str, wanted: &str) -> Option<BTreeMap<String, String>> {
    let mut found: Option<BTreeMap<String, String>> = None;
    let mut inside = false;
    for line in text.lines() {
        let indented = line.starts_with([' ', '\t']);
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            inside = name.split_whitespace().collect::<Vec<_>>().join(" ") == wanted;
            if inside {
                found.get_or_insert_with(BTreeMap::new);
            }
            continue;
        }
        if !inside || indented {
            continue;
        }
        if let (Some(map), Some((k, v))) = (found.as_mut(), line.split_once('=')) {
            let value = v.trim();
            if !value.is_empty() {
                map.insert(k.trim().to_ascii_lowercase(), value.to_owned());
            }
        }
    }
    found
}

/// Reads a file, `None` if it does not exist.
fn read(path: &PathBuf) -> Result<Option<String>, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read the AWS file {}: {e}", path.display())),
    }
}

/// The profile the environment `env` names, from its files; `None` when
/// there are no files or the default profile is in none.
pub(crate) fn load(env: &dyn Fn(&str) -> Option<String>) -> Result<Option<Profile>, String> {
    let explicit = env("AWS_PROFILE").filter(|p| !p.is_empty());
    let name = explicit.clone().unwrap_or_else(|| "default".to_owned());
    let home = env("HOME").map(PathBuf::from);
    let path = |var: &str, file: &str| {
        env(var)
            .map(PathBuf::from)
            .or_else(|| home.as_ref().map(|h| h.join(".aws").join(file)))
    };
    let credentials = path("AWS_SHARED_CREDENTIALS_FILE", "credentials");
    let config = path("AWS_CONFIG_FILE", "config");
    let mut settings: Option<BTreeMap<String, String>> = None;
    // The config file first, the credentials file over it.
    let config_section = if name == "default" {
        "default".to_owned()
    } else {
        format!("profile {name}")
    };
    for (file, wanted) in [
        (&config, config_section.as_str()),
        (&credentials, name.as_str()),
    ] {
        let Some(file) = file else { continue };
        if let Some(found) = read(file)?.and_then(|text| section(&text, wanted)) {
            settings.get_or_insert_with(BTreeMap::new).extend(found);
        }
    }
    match (settings, explicit) {
        (Some(settings), _) => Ok(Some(Profile { settings })),
        (None, Some(name)) => Err(format!(
            "the AWS profile {name:?} (AWS_PROFILE) is in neither {} nor {}",
            config.map_or("-".into(), |p| p.display().to_string()),
            credentials.map_or("-".into(), |p| p.display().to_string()),
        )),
        (None, None) => Ok(None),
    }
}

impl Profile {
    fn get(&self, key: &str) -> Option<&String> {
        self.settings.get(key)
    }

    /// Sets on `builder` what the environment `env` does not set.
    pub(crate) fn apply(
        &self,
        mut builder: AmazonS3Builder,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<AmazonS3Builder, String> {
        let set = |var: &str| env(var).is_some_and(|v| !v.is_empty());
        if !set("AWS_ACCESS_KEY_ID") {
            match (
                self.get("aws_access_key_id"),
                self.get("aws_secret_access_key"),
            ) {
                (Some(id), Some(secret)) => {
                    builder = builder
                        .with_access_key_id(id)
                        .with_secret_access_key(secret);
                    if let Some(token) = self.get("aws_session_token") {
                        builder = builder.with_token(token);
                    }
                }
                (None, None) => {
                    if let Some(other) = UNSUPPORTED.iter().find(|k| self.get(k).is_some()) {
                        return Err(format!(
                            "the AWS profile's credentials come from `{other}`, which Spate does not follow: \
                             put the credentials in the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, \
                             AWS_SESSION_TOKEN) or static keys in the profile"
                        ));
                    }
                }
                _ => return Err(
                    "the AWS profile has only one of aws_access_key_id and aws_secret_access_key"
                        .to_owned(),
                ),
            }
        }
        if !set("AWS_REGION") && !set("AWS_DEFAULT_REGION") {
            if let Some(region) = self.get("region") {
                builder = builder.with_region(region);
            }
        }
        if !set("AWS_ENDPOINT_URL") && !set("AWS_ENDPOINT") {
            if let Some(endpoint) = self.get("endpoint_url") {
                builder = builder.with_endpoint(endpoint);
            }
        }
        Ok(builder)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::aws::AmazonS3ConfigKey;
    use std::collections::HashMap;

    fn files(credentials: &str, config: &str) -> (tempdir::Dir, HashMap<String, String>) {
        let dir = tempdir::Dir::new();
        std::fs::write(dir.0.join("credentials"), credentials).unwrap();
        std::fs::write(dir.0.join("config"), config).unwrap();
        let env = HashMap::from([
            (
                "AWS_SHARED_CREDENTIALS_FILE".to_owned(),
                dir.0.join("credentials").display().to_string(),
            ),
            (
                "AWS_CONFIG_FILE".to_owned(),
                dir.0.join("config").display().to_string(),
            ),
        ]);
        (dir, env)
    }

    mod tempdir {
        pub struct Dir(pub std::path::PathBuf);
        impl Dir {
            pub fn new() -> Dir {
                use std::sync::atomic::{AtomicU64, Ordering};
                static N: AtomicU64 = AtomicU64::new(0);
                let p = std::env::temp_dir().join(format!(
                    "spate-aws-files-{}-{}",
                    std::process::id(),
                    N.fetch_add(1, Ordering::Relaxed)
                ));
                std::fs::create_dir_all(&p).unwrap();
                Dir(p)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    fn built(env: &HashMap<String, String>) -> Result<AmazonS3Builder, String> {
        let lookup = |k: &str| env.get(k).cloned();
        let profile = load(&lookup)?.expect("a profile");
        profile.apply(AmazonS3Builder::new(), &lookup)
    }

    fn value(b: &AmazonS3Builder, key: AmazonS3ConfigKey) -> Option<String> {
        b.get_config_value(&key)
    }

    const CREDENTIALS: &str = "\
# comment
[default]
aws_access_key_id = AKIDDEFAULT
aws_secret_access_key = secret-default

[ci]
aws_access_key_id=AKIDCI
aws_secret_access_key=secret-ci
aws_session_token = token-ci
";
    const CONFIG: &str = "\
[default]
region = eu-west-1

[profile ci]
region = us-east-2
endpoint_url = http://127.0.0.1:9000
s3 =
  addressing_style = path

[profile roles]
role_arn = arn:aws:iam::1:role/x
source_profile = default
";

    #[test]
    fn the_default_profile_and_a_named_one_are_read_from_both_files() {
        let (_dir, mut env) = files(CREDENTIALS, CONFIG);
        let b = built(&env).unwrap();
        assert_eq!(
            value(&b, AmazonS3ConfigKey::AccessKeyId).as_deref(),
            Some("AKIDDEFAULT")
        );
        assert_eq!(
            value(&b, AmazonS3ConfigKey::SecretAccessKey).as_deref(),
            Some("secret-default")
        );
        assert_eq!(
            value(&b, AmazonS3ConfigKey::Region).as_deref(),
            Some("eu-west-1")
        );
        env.insert("AWS_PROFILE".into(), "ci".into());
        let b = built(&env).unwrap();
        assert_eq!(
            value(&b, AmazonS3ConfigKey::AccessKeyId).as_deref(),
            Some("AKIDCI")
        );
        assert_eq!(
            value(&b, AmazonS3ConfigKey::Token).as_deref(),
            Some("token-ci")
        );
        assert_eq!(
            value(&b, AmazonS3ConfigKey::Region).as_deref(),
            Some("us-east-2")
        );
        assert_eq!(
            value(&b, AmazonS3ConfigKey::Endpoint).as_deref(),
            Some("http://127.0.0.1:9000")
        );
    }

    #[test]
    fn the_environment_wins_and_nothing_secret_is_printed() {
        let (_dir, mut env) = files(CREDENTIALS, CONFIG);
        env.insert("AWS_ACCESS_KEY_ID".into(), "FROMENV".into());
        env.insert("AWS_REGION".into(), "ap-south-1".into());
        let b = built(&env).unwrap();
        // The builder keeps what from_env would have set; the profile adds nothing.
        assert_eq!(value(&b, AmazonS3ConfigKey::AccessKeyId), None);
        assert_eq!(value(&b, AmazonS3ConfigKey::Region), None);
        let lookup = |k: &str| env.get(k).cloned();
        let shown = format!("{:?}", load(&lookup).unwrap().unwrap());
        assert!(shown.contains("aws_secret_access_key"), "{shown}");
        assert!(
            !shown.contains("secret-default") && !shown.contains("AKIDDEFAULT"),
            "{shown}"
        );
    }

    #[test]
    fn unusable_profiles_say_why_and_missing_files_are_no_profile() {
        let (_dir, mut env) = files(CREDENTIALS, CONFIG);
        env.insert("AWS_PROFILE".into(), "roles".into());
        let e = built(&env).unwrap_err();
        assert!(e.contains("role_arn") && !e.contains("arn:aws"), "{e}");
        env.insert("AWS_PROFILE".into(), "nope".into());
        let e = built(&env).unwrap_err();
        assert!(e.contains("\"nope\"") && e.contains("neither"), "{e}");
        let (_dir2, env2) = files("", "");
        let none = HashMap::from([("HOME".to_owned(), "/nonexistent-home".to_owned())]);
        assert!(load(&|k: &str| none.get(k).cloned()).unwrap().is_none());
        assert!(load(&|k: &str| env2.get(k).cloned()).unwrap().is_none());
        let (_dir3, mut half) = files("[default]\naws_access_key_id = X\n", "");
        half.remove("AWS_CONFIG_FILE");
        assert!(built(&half).unwrap_err().contains("only one of"));
    }
}
