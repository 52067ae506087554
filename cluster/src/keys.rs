//! The layout of a job's keys in etcd: everything lives under
//! `/spate/<job>/`, so that jobs sharing an etcd never see each other's keys.
//!
//! Owns the names only; what each key holds is defined next to the code
//! that writes it (`membership`, `leader`) and in docs/cluster.md.

/// A job name that cannot be used in a key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JobNameError {
    /// Empty, too long, or with a character outside `[A-Za-z0-9._-]`.
    #[error(
        "job name {name:?}: expected 1 to 128 characters from A-Z a-z 0-9 . _ - (it names etcd keys)"
    )]
    Invalid {
        /// The name as given.
        name: String,
    },
}

/// The keys of one job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobKeys {
    prefix: String,
}

impl JobKeys {
    /// The keys of job `job`.
    pub fn new(job: &str) -> Result<Self, JobNameError> {
        let ok = !job.is_empty()
            && job.len() <= 128
            && job
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            && job != "."
            && job != "..";
        if !ok {
            return Err(JobNameError::Invalid {
                name: job.to_string(),
            });
        }
        Ok(JobKeys {
            prefix: format!("/spate/{job}/"),
        })
    }

    /// `/spate/<job>/`: every key of the job starts with it.
    pub fn prefix(&self) -> &[u8] {
        self.prefix.as_bytes()
    }

    /// `/spate/<job>/members/`: one key per live process.
    pub fn members_prefix(&self) -> Vec<u8> {
        format!("{}members/", self.prefix).into_bytes()
    }

    /// `/spate/<job>/members/<process-id>`, bound to the process's lease.
    pub fn member(&self, process_id: u32) -> Vec<u8> {
        format!("{}members/{process_id}", self.prefix).into_bytes()
    }

    /// `/spate/<job>/leader`, bound to the leader's lease; its create
    /// revision is the leader's term.
    pub fn leader(&self) -> Vec<u8> {
        format!("{}leader", self.prefix).into_bytes()
    }

    /// `/spate/<job>/assignment`: which processes run the job.
    pub fn assignment(&self) -> Vec<u8> {
        format!("{}assignment", self.prefix).into_bytes()
    }

    /// `/spate/<job>/checkpoint`: the latest completed global checkpoint.
    pub fn checkpoint_pointer(&self) -> Vec<u8> {
        format!("{}checkpoint", self.prefix).into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::JobKeys;

    #[test]
    fn keys_live_under_the_job_prefix_and_names_are_checked() {
        let k = JobKeys::new("nexmark-q5").unwrap();
        assert_eq!(k.member(3), b"/spate/nexmark-q5/members/3");
        for key in [
            k.leader(),
            k.assignment(),
            k.checkpoint_pointer(),
            k.member(0),
        ] {
            assert!(key.starts_with(k.prefix()));
        }
        for bad in ["", "a/b", "..", "a b", "é"] {
            assert!(JobKeys::new(bad).is_err(), "{bad:?} accepted");
        }
    }
}
