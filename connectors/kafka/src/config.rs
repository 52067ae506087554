//! Client settings shared by the source and the sink, and their redaction.
//!
//! Users pass librdkafka properties as they write them for any Kafka client
//! (`security.protocol`, `sasl.*`, `ssl.*`, ...); they reach librdkafka
//! unchanged. Values that may be secret never leave this module in text:
//! [`KafkaProperties`]'s `Debug` prints them as `<redacted>`, and client
//! errors are rendered through [`redact_error`], which leaves configuration
//! values out.
//!
//! Owns: the property map and what counts as secret. Must not touch: the
//! engine.

use std::collections::BTreeMap;

/// librdkafka client properties (`bootstrap.servers` and the rest).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct KafkaProperties(BTreeMap<String, String>);

/// Whether the value of property `key` may be a secret (and is never
/// printed): every `ssl.*`, `sasl.*` and `security.*` setting except the
/// protocol and mechanism names, and anything naming a password, secret,
/// key or token.
pub fn is_secret(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    let public = matches!(
        key.as_str(),
        "security.protocol" | "sasl.mechanism" | "sasl.mechanisms"
    );
    !public
        && (key.starts_with("ssl.")
            || key.starts_with("sasl.")
            || key.starts_with("security.")
            || ["password", "secret", "key", "token", "jaas", "credential"]
                .iter()
                .any(|w| key.contains(w)))
}

impl KafkaProperties {
    /// Properties with `bootstrap.servers` set.
    pub fn new(brokers: impl Into<String>) -> Self {
        let mut p = Self::default();
        p.set("bootstrap.servers", brokers);
        p
    }

    /// Sets a property (replacing an earlier value).
    pub fn set(&mut self, key: impl Into<String>, value: impl Into<String>) -> &mut Self {
        self.0.insert(key.into(), value.into());
        self
    }

    /// Sets a property, builder style.
    pub fn with(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.set(key, value);
        self
    }

    /// A property's value.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// The bootstrap servers (empty if unset).
    pub fn brokers(&self) -> &str {
        self.get("bootstrap.servers").unwrap_or("")
    }

    /// Whether connections are plaintext (no TLS, no SASL).
    pub fn is_plaintext(&self) -> bool {
        self.get("security.protocol")
            .is_none_or(|p| p.eq_ignore_ascii_case("plaintext"))
    }

    /// Every property.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// An rdkafka client configuration with these properties.
    pub(crate) fn client_config(&self) -> rdkafka::ClientConfig {
        let mut c = rdkafka::ClientConfig::new();
        for (k, v) in self.iter() {
            c.set(k, v);
        }
        c
    }
}

impl std::fmt::Debug for KafkaProperties {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut m = f.debug_map();
        for (k, v) in &self.0 {
            if is_secret(k) {
                m.entry(k, &"<redacted>");
            } else {
                m.entry(k, v);
            }
        }
        m.finish()
    }
}

/// A librdkafka error as text without any configuration value (rdkafka's
/// own `Display` of a configuration error includes the rejected value,
/// which may be a password).
pub fn redact_error(error: &rdkafka::error::KafkaError) -> String {
    use rdkafka::error::KafkaError;
    match error {
        KafkaError::ClientConfig(_, description, key, _value) => {
            let description = if is_secret(key) {
                "invalid value (not shown)".to_string()
            } else {
                description.clone()
            };
            format!("client configuration error on property {key:?}: {description}")
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_never_printed() {
        let p = KafkaProperties::new("b:9092")
            .with("security.protocol", "SASL_SSL")
            .with("sasl.mechanism", "SCRAM-SHA-512")
            .with("sasl.username", "alice")
            .with("sasl.password", "hunter2")
            .with("ssl.key.password", "k3y")
            .with("ssl.key.pem", "-----BEGIN PRIVATE KEY-----");
        let shown = format!("{p:?}");
        for secret in ["hunter2", "k3y", "BEGIN PRIVATE", "alice"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(shown.contains("SASL_SSL") && shown.contains("SCRAM-SHA-512"));
        let error = rdkafka::error::KafkaError::ClientConfig(
            rdkafka::types::RDKafkaConfRes::RD_KAFKA_CONF_INVALID,
            "bad value hunter2".into(),
            "sasl.password".into(),
            "hunter2".into(),
        );
        assert!(!redact_error(&error).contains("hunter2"));
    }
}
