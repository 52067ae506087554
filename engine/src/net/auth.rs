//! Mutual authentication of two processes of one job before anything else
//! crosses their connection.
//!
//! Each side sends a [`Frame::Hello`] with its process index and a fresh
//! 32-byte nonce, then a [`Frame::Proof`]: HMAC-SHA256, keyed with the job's
//! shared secret, over a label naming its role (the side that connected or
//! the side that accepted), its process index and both nonces, its own first.
//! Each side checks the other's proof in constant time. The secret never
//! crosses the network; a proof is bound to this connection's nonces, so a
//! recorded one is worthless, and to the role, so a proof an acceptor sends
//! cannot be reflected back to it as a connector's. What this does not give:
//! confidentiality or integrity of the stream after the handshake (no TLS);
//! run the data plane on a private network (`docs/cluster.md` §7).

use super::wire::{Frame, NONCE, VERSION};
use aws_lc_rs::hmac;
use std::io::{Read, Write};

/// Which end of the connection this side is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    Connector,
    Acceptor,
}

/// Who a process is, as its hello says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Identity {
    pub process: u32,
    pub processes: u32,
    pub parallelism: u32,
}

/// Why a handshake failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AuthError {
    #[error("{0}")]
    Wire(#[from] super::wire::WireError),
    #[error("the peer did not start with a hello: {0}")]
    NoHello(String),
    #[error("the peer speaks protocol version {0}, this process {VERSION}")]
    Version(u16),
    #[error("the peer runs another shape of job: {peer:?}, this process {me:?}")]
    Shape { peer: Identity, me: Identity },
    #[error(
        "the peer's proof does not match: it does not know the job's secret, or runs another job"
    )]
    BadProof,
    #[error("no random nonce: {0}")]
    Random(String),
}

/// What a proof signs: the role's label, the job's name (length first),
/// the prover's process index, the prover's nonce, then the other side's.
fn proof_message(
    role: Role,
    job: &[u8],
    process: u32,
    own: &[u8; NONCE],
    other: &[u8; NONCE],
) -> Vec<u8> {
    let label: &[u8] = match role {
        Role::Connector => b"spate-net-v1 connector",
        Role::Acceptor => b"spate-net-v1 acceptor",
    };
    let mut message = Vec::with_capacity(label.len() + 8 + job.len() + 4 + 2 * NONCE);
    message.extend_from_slice(label);
    message.extend_from_slice(&(job.len() as u64).to_le_bytes());
    message.extend_from_slice(job);
    message.extend_from_slice(&process.to_le_bytes());
    message.extend_from_slice(own);
    message.extend_from_slice(other);
    message
}

#[cfg(test)]
fn proof(
    key: &hmac::Key,
    role: Role,
    process: u32,
    own: &[u8; NONCE],
    other: &[u8; NONCE],
) -> hmac::Tag {
    hmac::sign(key, &proof_message(role, b"job", process, own, other))
}

/// Runs the handshake on `stream` as `role`; returns the peer's identity
/// once it proved it knows `secret`. The caller checks that identity is one
/// it expects (not itself, not a process already connected).
pub(crate) fn handshake(
    stream: &mut (impl Read + Write),
    secret: &[u8],
    job: &[u8],
    role: Role,
    me: Identity,
) -> Result<Identity, AuthError> {
    let mut nonce = [0u8; NONCE];
    aws_lc_rs::rand::fill(&mut nonce).map_err(|e| AuthError::Random(e.to_string()))?;
    Frame::Hello {
        version: VERSION,
        process: me.process,
        processes: me.processes,
        parallelism: me.parallelism,
        nonce,
    }
    .write(stream)
    .map_err(super::wire::WireError::from)?;
    let (peer, peer_nonce) = match Frame::read_limited(stream, 256)? {
        Frame::Hello {
            version,
            process,
            processes,
            parallelism,
            nonce,
        } => {
            if version != VERSION {
                return Err(AuthError::Version(version));
            }
            (
                Identity {
                    process,
                    processes,
                    parallelism,
                },
                nonce,
            )
        }
        other => return Err(AuthError::NoHello(format!("{other:?}"))),
    };
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let mine = hmac::sign(
        &key,
        &proof_message(role, job, me.process, &nonce, &peer_nonce),
    );
    let mut mac = [0u8; NONCE];
    mac.copy_from_slice(mine.as_ref());
    Frame::Proof { mac }
        .write(stream)
        .map_err(super::wire::WireError::from)?;
    let theirs = match Frame::read_limited(stream, 256)? {
        Frame::Proof { mac } => mac,
        _ => return Err(AuthError::BadProof),
    };
    let peer_role = match role {
        Role::Connector => Role::Acceptor,
        Role::Acceptor => Role::Connector,
    };
    // Constant time: `verify` compares the whole tag.
    hmac::verify(
        &key,
        &proof_message(peer_role, job, peer.process, &peer_nonce, &nonce),
        &theirs,
    )
    .map_err(|_| AuthError::BadProof)?;
    if peer.processes != me.processes || peer.parallelism != me.parallelism {
        return Err(AuthError::Shape { peer, me });
    }
    Ok(peer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    fn id(process: u32) -> Identity {
        Identity {
            process,
            processes: 3,
            parallelism: 2,
        }
    }

    /// Runs both ends over a real socket pair; returns (connector's result,
    /// acceptor's result).
    fn pair(
        connector_secret: &'static [u8],
        acceptor_secret: &'static [u8],
        connector: Identity,
    ) -> (Result<Identity, AuthError>, Result<Identity, AuthError>) {
        pair_of_jobs(
            connector_secret,
            acceptor_secret,
            connector,
            b"orders",
            b"orders",
        )
    }

    fn pair_of_jobs(
        connector_secret: &'static [u8],
        acceptor_secret: &'static [u8],
        connector: Identity,
        connector_job: &'static [u8],
        acceptor_job: &'static [u8],
    ) -> (Result<Identity, AuthError>, Result<Identity, AuthError>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let r = handshake(&mut s, acceptor_secret, acceptor_job, Role::Acceptor, id(0));
            drop(s);
            r
        });
        let mut s = TcpStream::connect(addr).unwrap();
        let c = handshake(
            &mut s,
            connector_secret,
            connector_job,
            Role::Connector,
            connector,
        );
        drop(s);
        (c, acceptor.join().unwrap())
    }

    #[test]
    fn the_same_secret_authenticates_both_ways() {
        let (c, a) = pair(b"0123456789abcdef", b"0123456789abcdef", id(2));
        assert_eq!(c.unwrap(), id(0));
        assert_eq!(a.unwrap(), id(2));
    }

    #[test]
    fn a_wrong_secret_is_refused_by_both_sides() {
        let (c, a) = pair(b"0123456789abcdeX", b"0123456789abcdef", id(2));
        assert!(matches!(a, Err(AuthError::BadProof)), "{a:?}");
        assert!(c.is_err(), "{c:?}");
    }

    #[test]
    fn another_job_with_the_same_secret_is_refused() {
        let (c, a) = pair_of_jobs(
            b"0123456789abcdef",
            b"0123456789abcdef",
            id(2),
            b"orders",
            b"payments",
        );
        assert!(matches!(a, Err(AuthError::BadProof)), "{a:?}");
        assert!(c.is_err(), "{c:?}");
    }

    #[test]
    fn another_job_shape_is_refused() {
        let other = Identity {
            process: 1,
            processes: 4,
            parallelism: 2,
        };
        let (_, a) = pair(b"0123456789abcdef", b"0123456789abcdef", other);
        assert!(matches!(a, Err(AuthError::Shape { .. })), "{a:?}");
    }

    #[test]
    fn a_reflected_acceptor_proof_is_refused() {
        // An acceptor's proof over the same nonces, sent back as a
        // connector's: the role label differs, so it does not verify.
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"0123456789abcdef");
        let (a, b) = ([1u8; NONCE], [2u8; NONCE]);
        let acceptor = proof(&key, Role::Acceptor, 0, &a, &b);
        let connector = proof(&key, Role::Connector, 0, &a, &b);
        assert_ne!(acceptor.as_ref(), connector.as_ref());
    }
}
