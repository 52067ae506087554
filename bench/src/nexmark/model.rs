//! The Nexmark event types: [`Person`], [`Auction`], [`Bid`] and the [`Event`] union.
//!
//! Field names and meanings follow the Nexmark schema (nexmark/nexmark, the `nexmark`
//! crate). Times are epoch milliseconds (`u64`), prices are cents (`u64`), ids are
//! `u64`. Every type is serde- and rkyv-serializable, so events can be written as
//! JSON lines and kept in engine state.
//!
//! Two deliberate deviations from the reference crate, both to keep events small and
//! cheap to generate:
//! - `extra` is an empty string unless the generator is configured with
//!   [`GeneratorConfig::generate_extra`](super::generator::GeneratorConfig::generate_extra)
//!   (the reference pads every event to an average byte size with random letters).
//! - [`Bid::channel`] and [`Bid::url`] are `Cow<'static, str>` borrowing from static
//!   tables, so generating a bid never allocates. Deserialized bids own their strings.
//!
//! A bid also carries its [`Origin`]: when it was due to be emitted, in
//! microseconds, which the benchmark measures latency from. It is
//! measurement metadata, not Nexmark data: not written to JSON, and no part
//! of equality, order or hashing.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

/// When an event was due to be emitted: epoch microseconds on the job's
/// clock in an open-loop run (the schedule,
/// [`GeneratorConfig::schedule_us`](super::generator::GeneratorConfig::schedule_us));
/// rows made from one
/// event carry it on, and their latency is measured from it. Event time
/// (`date_time`) is that schedule rounded to a millisecond, so it cannot
/// serve: it is up to half a millisecond off either way.
///
/// Equality, order and hashing ignore it (every two origins compare equal),
/// so a row equals the reference's row whatever their origins, and it is not
/// serialized to JSON (a bid read from JSON has origin 0).
#[derive(
    Clone, Copy, Debug, Default, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, spate::Schema,
)]
pub struct Origin(pub u64);

impl PartialEq for Origin {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Origin {}

impl PartialOrd for Origin {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Origin {
    fn cmp(&self, _: &Self) -> std::cmp::Ordering {
        std::cmp::Ordering::Equal
    }
}

impl std::hash::Hash for Origin {
    fn hash<H: std::hash::Hasher>(&self, _: &mut H) {}
}

/// The three kinds of Nexmark event, in the order of the 1:3:46 mix.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
    spate::Schema,
)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// A new person registers.
    Person,
    /// A person opens an auction.
    Auction,
    /// A person bids on an auction.
    Bid,
}

/// A person who sells items and places bids.
#[derive(
    Clone,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
    spate::Schema,
)]
pub struct Person {
    /// Person id, unique; the generator's first person is 1000.
    pub id: u64,
    /// Full name, "First Last".
    pub name: String,
    /// Email address.
    pub email_address: String,
    /// Credit card number, four groups of four digits.
    pub credit_card: String,
    /// One of a few US cities.
    pub city: String,
    /// One of a few two-letter US state codes, upper case (`"OR"`).
    pub state: String,
    /// Registration time, epoch milliseconds.
    pub date_time: u64,
    /// Padding; empty by default (see the module doc).
    pub extra: String,
}

/// An item put up for auction by a seller.
#[derive(
    Clone,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
    spate::Schema,
)]
pub struct Auction {
    /// Auction id, unique; the generator's first auction is 1000.
    pub id: u64,
    /// Item name.
    pub item_name: String,
    /// Item description.
    pub description: String,
    /// Initial bid, cents.
    pub initial_bid: u64,
    /// Reserve price, cents (at least `initial_bid`).
    pub reserve: u64,
    /// Opening time, epoch milliseconds.
    pub date_time: u64,
    /// Closing time, epoch milliseconds (after `date_time`).
    pub expires: u64,
    /// The selling [`Person::id`].
    pub seller: u64,
    /// Category id; the generator uses 10..15.
    pub category: u64,
    /// Padding; empty by default (see the module doc).
    pub extra: String,
}

/// A bid on an auction.
#[derive(
    Clone,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
    spate::Schema,
)]
pub struct Bid {
    /// The [`Auction::id`] bid on. May name an auction that does not exist (yet):
    /// the generator, like the reference, bids up to 10 ids past the newest auction.
    pub auction: u64,
    /// The bidding [`Person::id`].
    pub bidder: u64,
    /// Price, cents.
    pub price: u64,
    /// Channel the bid came through (`"Google"`, `"channel-1234"`, ...); borrowed from
    /// a static table by the generator.
    #[rkyv(with = rkyv::with::AsOwned)]
    pub channel: Cow<'static, str>,
    /// URL of the bid; borrowed from a static table by the generator.
    #[rkyv(with = rkyv::with::AsOwned)]
    pub url: Cow<'static, str>,
    /// Bid time, epoch milliseconds.
    pub date_time: u64,
    /// Padding; empty by default (see the module doc).
    pub extra: String,
    /// When the bid was due to be emitted (measurement metadata, see
    /// [`Origin`]).
    #[serde(skip)]
    pub origin: Origin,
}

/// One Nexmark event. Serialized as JSON with a `"type"` tag first:
/// `{"type":"bid","auction":1000,...}`.
#[derive(
    Clone,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
    spate::Schema,
)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Event {
    /// A new person.
    Person(Person),
    /// A new auction.
    Auction(Auction),
    /// A bid.
    Bid(Bid),
}

impl Event {
    /// The event time, epoch milliseconds (`date_time` of the inner record).
    #[inline]
    pub fn timestamp_ms(&self) -> u64 {
        match self {
            Event::Person(p) => p.date_time,
            Event::Auction(a) => a.date_time,
            Event::Bid(b) => b.date_time,
        }
    }

    /// Which kind of event this is.
    #[inline]
    pub fn kind(&self) -> EventKind {
        match self {
            Event::Person(_) => EventKind::Person,
            Event::Auction(_) => EventKind::Auction,
            Event::Bid(_) => EventKind::Bid,
        }
    }
}
