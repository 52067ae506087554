//! Result rows of the Nexmark queries and the constants that define the queries.
//!
//! The engine-side queries and the [`reference`](super::reference) implementation
//! both produce these types. Fields serialize in declaration order, so equal results
//! written with [`write_rows_jsonl`](super::json::write_rows_jsonl) are equal bytes.
//! Every row type is totally ordered (derived, field by field), so a query's
//! canonical comparison form is its rows sorted. Times are epoch milliseconds and
//! prices cents; windows are half-open, `[window_start, window_end)`.
//!
//! q0's rows are the [`Bid`](super::model::Bid)s themselves. q0–q2 rows carry
//! their bid's [`Origin`], which takes no part in comparisons or JSON.

use serde::{Deserialize, Serialize};

use super::model::Origin;

/// q1 converts dollars to euros as `price * Q1_EURO_NUMERATOR / Q1_EURO_DENOMINATOR`
/// (integer division, truncating): the Nexmark SQL's `0.908 * price`, kept integral.
pub const Q1_EURO_NUMERATOR: u64 = 908;
/// See [`Q1_EURO_NUMERATOR`].
pub const Q1_EURO_DENOMINATOR: u64 = 1000;
/// q2 selects bids whose `auction % Q2_AUCTION_MODULUS == 0`.
pub const Q2_AUCTION_MODULUS: u64 = 123;
/// q3 joins auctions of this category...
pub const Q3_CATEGORY: u64 = 10;
/// ...with persons in one of these states (exact, upper-case match).
pub const Q3_STATES: [&str; 3] = ["OR", "ID", "CA"];
/// q5's sliding window size.
pub const Q5_WINDOW_SIZE_MS: u64 = 10_000;
/// q5's sliding window slide.
pub const Q5_WINDOW_SLIDE_MS: u64 = 2_000;
/// q7's tumbling window size.
pub const Q7_WINDOW_SIZE_MS: u64 = 10_000;
/// q8's tumbling window size.
pub const Q8_WINDOW_SIZE_MS: u64 = 10_000;

const _: () = assert!(Q5_WINDOW_SIZE_MS % Q5_WINDOW_SLIDE_MS == 0);

macro_rules! row {
    ($(#[$meta:meta])* pub struct $name:ident { $($(#[$fmeta:meta])* pub $field:ident : $ty:ty,)* }) => {
        $(#[$meta])*
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
        pub struct $name {
            $($(#[$fmeta])* pub $field: $ty,)*
        }
    };
}

row! {
    /// q1 (currency conversion): a bid with its price in euros.
    pub struct Q1Row {
        /// The bid's auction id.
        pub auction: u64,
        /// The bidder's person id.
        pub bidder: u64,
        /// Price in euro cents: `price * 908 / 1000`, truncated.
        pub price: u64,
        /// The bid's time.
        pub date_time: u64,
        /// The bid's `extra`.
        pub extra: String,
        /// The bid's [`Origin`] (latency measurement; not serialized, equal to
        /// every other).
        #[serde(skip)]
        pub origin: Origin,
    }
}

row! {
    /// q2 (selection): a bid on an auction whose id is a multiple of 123.
    pub struct Q2Row {
        /// The bid's auction id.
        pub auction: u64,
        /// The bid's price.
        pub price: u64,
        /// The bid's [`Origin`] (latency measurement; not serialized, equal to
        /// every other).
        #[serde(skip)]
        pub origin: Origin,
    }
}

row! {
    /// q3 (local item suggestion): a person in OR, ID or CA selling in category 10.
    pub struct Q3Row {
        /// The seller's name.
        pub name: String,
        /// The seller's city.
        pub city: String,
        /// The seller's state.
        pub state: String,
        /// The auction's id.
        pub id: u64,
    }
}

row! {
    /// q4 (average closing price per category): the running aggregate of a category,
    /// emitted each time one of its auctions closes with at least one bid. `count`
    /// grows by one with every update of a category, so the final row of a category
    /// is the one with the largest `count`.
    pub struct Q4Row {
        /// The category id.
        pub category: u64,
        /// `sum_price / count`, truncated (as Flink's `AVG` over `BIGINT`).
        pub avg_price: u64,
        /// Number of closed auctions of the category that had a qualifying bid.
        pub count: u64,
        /// Sum of those auctions' closing (maximum) prices.
        pub sum_price: u64,
    }
}

row! {
    /// q5 (hot items): an auction with the most bids in a sliding window.
    pub struct Q5Row {
        /// Window start, a multiple of 2 s.
        pub window_start: u64,
        /// Window end, `window_start + 10 s`.
        pub window_end: u64,
        /// The auction id.
        pub auction: u64,
        /// Its number of bids in the window (the window's maximum).
        pub count: u64,
    }
}

row! {
    /// q7 (highest bid): a bid with the highest price in a tumbling window.
    pub struct Q7Row {
        /// Window start, a multiple of 10 s.
        pub window_start: u64,
        /// Window end, `window_start + 10 s`.
        pub window_end: u64,
        /// The bid's auction id.
        pub auction: u64,
        /// The bidder's person id.
        pub bidder: u64,
        /// The bid's price (the window's maximum).
        pub price: u64,
        /// The bid's time.
        pub date_time: u64,
    }
}

row! {
    /// q8 (new users): a person who registered and opened an auction in the same
    /// tumbling window.
    pub struct Q8Row {
        /// Window start, a multiple of 10 s.
        pub window_start: u64,
        /// The person's id.
        pub id: u64,
        /// The person's name.
        pub name: String,
    }
}
