//! Masks what looks like a secret in free text the monitor shows (failure
//! reasons come from sources, sinks and user functions, and may quote a
//! connection string): the user information of URLs (`scheme://user:pass@`)
//! and the values of `password=`, `token=`, `secret=`, `key=`-like settings.

/// Setting names whose values are masked (matched case-insensitively as the
/// end of the name: `db_password`, `X-Api-Key`).
const SECRET_NAMES: &[&str] = &[
    "password",
    "passwd",
    "pwd",
    "secret",
    "token",
    "apikey",
    "api_key",
    "api-key",
    "credential",
    "credentials",
    "auth",
    "authorization",
];

const MASK: &str = "***";

/// `text` with URL credentials and secret settings masked.
pub(super) fn redact(text: &str) -> String {
    mask_settings(&mask_url_credentials(text))
}

/// `scheme://user:pass@host` becomes `scheme://***@host`.
fn mask_url_credentials(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| c.is_whitespace() || "/?#\"'<>".contains(c))
            .unwrap_or(tail.len());
        match tail[..end].rfind('@') {
            Some(at) => {
                out.push_str(MASK);
                out.push_str(&tail[at..end]);
            }
            None => out.push_str(&tail[..end]),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// `name=value` and `name: value` with a secret-like name get their value masked.
fn mask_settings(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.char_indices().peekable();
    let mut word_start = 0;
    while let Some((i, c)) = chars.next() {
        out.push(c);
        if c.is_alphanumeric() || c == '_' || c == '-' {
            continue;
        }
        let word = text[word_start..i].to_ascii_lowercase();
        let separator = c == '=' || c == ':';
        word_start = i + c.len_utf8();
        if !separator || !SECRET_NAMES.iter().any(|n| word.ends_with(n)) {
            continue;
        }
        // Skip spaces after ':' and an opening quote, then mask the value.
        while let Some(&(_, ' ')) = chars.peek() {
            out.push(' ');
            chars.next();
        }
        let mut masked = false;
        while let Some(&(j, v)) = chars.peek() {
            if v.is_whitespace() || ";,&".contains(v) {
                break;
            }
            chars.next();
            word_start = j + v.len_utf8();
            if !masked {
                out.push_str(MASK);
                masked = true;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_credentials_are_masked() {
        assert_eq!(
            redact("cannot connect to postgres://app:hunter2@db:5432/x (refused)"),
            "cannot connect to postgres://***@db:5432/x (refused)"
        );
        assert_eq!(
            redact("see https://example.org/a@b"),
            "see https://example.org/a@b"
        );
    }

    #[test]
    fn secret_settings_are_masked() {
        assert_eq!(
            redact("host=db user=app password=hunter2 port=5432"),
            "host=db user=app password=*** port=5432"
        );
        assert_eq!(redact("X-Api-Key: abc123; next"), "X-Api-Key: ***; next");
        assert_eq!(redact("db_token=\"t0k\",x=1"), "db_token=***,x=1");
        assert_eq!(redact("injected task failure"), "injected task failure");
    }
}
