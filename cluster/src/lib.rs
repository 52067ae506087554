//! The coordination layer of Spate's cluster mode, on etcd: membership
//! through leases, leader election for the checkpoint coordinator with a
//! fencing term, the job's assignment record and the pointer to the latest
//! completed global checkpoint, moved only by a fenced compare-and-swap.
//! The protocol is specified in docs/cluster.md.
//!
//! **Status.** The engine's TCP data plane runs a job in N processes
//! (`engine/src/net/`); `spate-bench nexmark --cluster etcd://…` finds its
//! peers and holds its membership through [`discovery`], and makes the
//! checkpoint pointer the job's commit point through [`commit`]: process 0
//! campaigns for the leader key, chooses what a run restores from the
//! pointer, and completes each global checkpoint by moving it. The
//! assignment record is written by nobody yet (process 0 is the leader
//! of every run, chosen by the launcher).
//!
//! What it owns: the etcd keys under `/spate/<job>/` ([`JobKeys`]) and their
//! values; the [`Coordination`] trait the protocol is written against, with
//! a real backend ([`EtcdClient`]) and a simulated one ([`sim::SimCluster`],
//! virtual time and seeded faults); the keepalive thread ([`KeepAlive`]).
//! What it must not touch: the engine's reactors. Every call here blocks
//! (for up to the client's timeout) and runs on threads of its own; the
//! engine will bridge to its reactors through channels and the
//! [`KeepAlive`]'s loss hook.
//!
//! **Why the JSON gateway rather than the `etcd-client` crate.** etcd v3
//! serves its key-value and lease API as JSON over plain HTTP/1.1 at `/v3/`
//! (its gRPC gateway, on the client port, in every etcd since 3.4). The
//! coordination traffic is a few small requests per second, so this crate
//! speaks that with `std::net::TcpStream`, `serde_json` and `base64`, all
//! already in the workspace's lock file: a clean build of this crate with
//! its dependencies takes about a minute on one core, nearly all of it
//! serde, thiserror and syn, which the workspace builds anyway (this crate
//! itself about 2.5 s, base64 under 1 s). `etcd-client` would bring tonic,
//! prost, h2/hyper, tower and a tokio runtime (on a thread of its own), and
//! generates its protobuf code at build time with prost-build, which needs
//! `protoc` installed: tens of crates more and a longer build (estimated,
//! not measured here), for no capability the protocol needs (watches are
//! not used: members and the leader are read when needed, and lease expiry
//! is noticed by the keepalive). The cost of the choice is
//! this crate's small HTTP reader and the JSON mapping in [`etcd`]; TLS to
//! etcd is not supported yet.

pub mod commit;
pub mod discovery;
pub mod etcd;
pub mod keepalive;
pub mod keys;
pub mod kv;
pub mod leader;
pub mod membership;
pub mod sim;

pub use commit::{Attempt, MoveError, PointerCommit, PointerMove};
pub use discovery::{discover, DiscoveryError, Membership};
pub use etcd::{EndpointError, EtcdClient};
pub use keepalive::{KeepAlive, LeaseLost, LeaseState};
pub use keys::{JobKeys, JobNameError};
pub use kv::{
    Compare, CompareOp, CompareTarget, CoordError, Coordination, KeyRange, KeyValue, Lease,
    LeaseId, RangeResponse, Revision, Txn, TxnOp, TxnOpResponse, TxnResponse,
};
pub use leader::{
    campaign, current_leader, read_assignment, read_pointer, AssignedProcess, Assignment,
    AssignmentError, Campaign, CampaignError, CheckpointPointer, CurrentLeader, LeaderRecord,
    Leadership, PointerError,
};
pub use membership::{join, leave, members, JoinError, Member, MemberInfo, ReadError};
