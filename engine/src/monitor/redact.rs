//! Masks what looks like a secret in free text the monitor shows (failure
//! reasons come from sources, sinks and user functions, and may quote a
//! connection string): the user information of URLs (`scheme://user:pass@`,
//! also with a `/` in the password), the values of `password=`, `token=`,
//! `"secret": "..."`-like settings (plain or JSON), and the whole value of
//! an `Authorization` header to the end of its line.

/// Setting names whose values are masked (matched case-insensitively as the
/// end of the name: `db_password`, `X-Api-Key`).
const SECRET_NAMES: &[&str] = &[
    "password",
    "passwd",
    "pwd",
    "token",
    "apikey",
    "api_key",
    "api-key",
    "credential",
    "credentials",
    "auth",
];

/// Setting names masked wherever they occur in a name (`client_secret_id`,
/// `aws_secret_access_key`, `ssh_private_key_path`).
const SECRET_PARTS: &[&str] = &[
    "secret",
    "private_key",
    "private-key",
    "privatekey",
    "access_key",
    "access-key",
    "accesskey",
];

/// Names whose whole value, to the end of the line, is a secret
/// (`Authorization: Bearer x`, `Basic x`, ...).
const LINE_NAMES: &[&str] = &["authorization"];

const MASK: &str = "***";

/// `text` with URL credentials and secret settings masked.
pub(super) fn redact(text: &str) -> String {
    mask_settings(&mask_url_credentials(text))
}

/// `scheme://user:pass@host` becomes `scheme://***@host`, also when the
/// password holds a `/` (`scheme://user:pa/ss@host`). Errs on the side of
/// masking: `scheme://host:port/path@x` becomes `scheme://***@x`.
fn mask_url_credentials(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| c.is_whitespace() || "\"'<>".contains(c))
            .unwrap_or(tail.len());
        let segment = &tail[..end];
        let authority = segment.find(['/', '?', '#']).unwrap_or(segment.len());
        let at = match segment[..authority].rfind('@') {
            Some(at) => Some(at),
            // No '@' before the first '/': a password with a '/' in it
            // when a ':' comes first and an '@' later.
            None if segment[..authority].contains(':') => segment.rfind('@'),
            None => None,
        };
        match at {
            Some(at) => {
                out.push_str(MASK);
                out.push_str(&segment[at..]);
            }
            None => out.push_str(segment),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// How much of a setting's value is masked.
#[derive(Clone, Copy, PartialEq)]
enum Extent {
    /// To the next space or `;,&'"}]` (or the closing quote of a quoted value).
    Word,
    /// To the end of the line (or the closing quote of a quoted value).
    Line,
}

fn extent(name: &str) -> Option<Extent> {
    let name = name.to_ascii_lowercase();
    if LINE_NAMES.iter().any(|n| name.ends_with(n)) {
        Some(Extent::Line)
    } else if SECRET_NAMES.iter().any(|n| name.ends_with(n))
        || SECRET_PARTS.iter().any(|n| name.contains(n))
    {
        Some(Extent::Word)
    } else {
        None
    }
}

/// Bytes of a setting's name (any non-ASCII byte too, so that every index
/// where a name starts or ends is a char boundary).
fn in_name(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b >= 0x80
}

/// `name=value`, `name: value` and `"name":"value"` with a secret-like
/// name get their value masked.
fn mask_settings(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut i = 0;
    while i < b.len() {
        if !in_name(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && in_name(b[i]) {
            i += 1;
        }
        // An optional closing quote of a JSON key, spaces, the separator.
        let mut j = i;
        if j < b.len() && (b[j] == b'"' || b[j] == b'\'') {
            j += 1;
        }
        while j < b.len() && b[j] == b' ' {
            j += 1;
        }
        if j >= b.len() || (b[j] != b'=' && b[j] != b':') {
            continue;
        }
        let Some(extent) = extent(&text[start..i]) else {
            continue;
        };
        j += 1;
        while j < b.len() && b[j] == b' ' {
            j += 1;
        }
        let (from, to) = value(b, j, extent);
        if to > from {
            out.push_str(&text[copied..from]);
            out.push_str(MASK);
            copied = to;
        }
        i = to.max(i);
    }
    out.push_str(&text[copied..]);
    out
}

/// The value that starts at `at`: inside its quotes if quoted, else to the
/// end of its word or line. Both ends are at ASCII bytes or the text's end.
fn value(b: &[u8], at: usize, extent: Extent) -> (usize, usize) {
    if at < b.len() && (b[at] == b'"' || b[at] == b'\'') {
        let quote = b[at];
        let close = b[at + 1..]
            .iter()
            .position(|&c| c == quote)
            .map_or(b.len(), |p| at + 1 + p);
        return (at + 1, close);
    }
    let stop = |c: u8| match extent {
        Extent::Line => c == b'\n' || c == b'\r',
        Extent::Word => c.is_ascii_whitespace() || b";,&\"'}]".contains(&c),
    };
    let end = b[at..]
        .iter()
        .position(|&c| stop(c))
        .map_or(b.len(), |p| at + p);
    (at, end)
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
    fn url_passwords_with_a_slash_are_masked() {
        assert_eq!(
            redact("cannot open s3://AKIA:ab/cd+ef@bucket/key"),
            "cannot open s3://***@bucket/key"
        );
        assert_eq!(
            redact("redis://:pa/ss@cache:6379"),
            "redis://***@cache:6379"
        );
        assert_eq!(
            redact("see http://host:8080/path ok"),
            "see http://host:8080/path ok"
        );
    }

    #[test]
    fn secret_settings_are_masked() {
        assert_eq!(
            redact("host=db user=app password=hunter2 port=5432"),
            "host=db user=app password=*** port=5432"
        );
        assert_eq!(redact("X-Api-Key: abc123; next"), "X-Api-Key: ***; next");
        assert_eq!(redact("db_token=\"t0k\",x=1"), "db_token=\"***\",x=1");
        assert_eq!(redact("injected task failure"), "injected task failure");
        assert_eq!(redact("pass\u{e9}word=x ok"), "pass\u{e9}word=x ok");
        assert_eq!(redact("\u{e9}token=\u{e9}\u{e9} x"), "\u{e9}token=*** x");
        assert_eq!(redact("token="), "token=");
    }

    #[test]
    fn authorization_is_masked_to_the_end_of_the_line() {
        assert_eq!(
            redact("401 for Authorization: Bearer abc.def\nnext line"),
            "401 for Authorization: ***\nnext line"
        );
        assert_eq!(
            redact("proxy-authorization=Basic dXNlcjpwYXNz"),
            "proxy-authorization=***"
        );
    }

    #[test]
    fn json_secrets_are_masked() {
        assert_eq!(
            redact(r#"{"user":"app","password":"hunter 2","port":5432}"#),
            r#"{"user":"app","password":"***","port":5432}"#
        );
        assert_eq!(redact(r#"{"token": 'abc'}"#), r#"{"token": '***'}"#);
        assert_eq!(redact(r#"{"api_key":12345}"#), r#"{"api_key":***}"#);
    }

    #[test]
    fn keys_naming_a_secret_anywhere_are_masked() {
        assert_eq!(
            redact("aws_secret_access_key=AbC/123 region=eu"),
            "aws_secret_access_key=*** region=eu"
        );
        assert_eq!(
            redact("ssh_private_key_pem: MIIE x"),
            "ssh_private_key_pem: *** x"
        );
        assert_eq!(redact("AWS_ACCESS_KEY_ID=AKIA1"), "AWS_ACCESS_KEY_ID=***");
        assert_eq!(redact("client_secret=s3"), "client_secret=***");
    }
}
