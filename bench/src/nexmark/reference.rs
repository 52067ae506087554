//! A plain, sequential, obviously-correct implementation of the Nexmark queries q0,
//! q1, q2, q3, q4, q5, q7 and q8 over a slice of events, for checking the engine.
//!
//! Each function returns the query's *canonical comparison form*: the multiset of all
//! rows the query emits over the whole input, sorted (q4: the final aggregate per
//! category). Semantics follow the Nexmark SQL definitions (nexmark/nexmark), read as
//! a streaming job would run them:
//! - Windows are aligned to multiples of their slide (tumbling: their size) since the
//!   epoch, half-open `[start, start + size)`. Windows that would start before the
//!   epoch are not emitted (they only arise for events in the first seconds of 1970).
//! - End of input acts as a final watermark of +infinity: every window that contains
//!   an event, and every open auction, is closed and emitted.
//! - No event is late. In the engine each source emits monotone timestamps and
//!   watermarks follow them, so a window or auction is only closed once no event
//!   that belongs to it can still arrive; the reference therefore uses the whole
//!   input for every window.
//! - Events are processed in slice order only where the order is observable (it is
//!   not, for any of these canonical forms).
//!
//! The implementations deliberately share nothing with the engine-side queries but
//! the row types and constants in [`rows`](super::rows).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::model::{Auction, Bid, Event, Person};
use super::rows::{
    Q1Row, Q2Row, Q3Row, Q4Row, Q5Row, Q7Row, Q8Row, Q1_EURO_DENOMINATOR, Q1_EURO_NUMERATOR,
    Q2_AUCTION_MODULUS, Q3_CATEGORY, Q3_STATES, Q5_WINDOW_SIZE_MS, Q5_WINDOW_SLIDE_MS,
    Q7_WINDOW_SIZE_MS, Q8_WINDOW_SIZE_MS,
};

fn bids(events: &[Event]) -> impl Iterator<Item = &Bid> {
    events.iter().filter_map(|e| match e {
        Event::Bid(b) => Some(b),
        _ => None,
    })
}

fn auctions(events: &[Event]) -> impl Iterator<Item = &Auction> {
    events.iter().filter_map(|e| match e {
        Event::Auction(a) => Some(a),
        _ => None,
    })
}

fn persons(events: &[Event]) -> impl Iterator<Item = &Person> {
    events.iter().filter_map(|e| match e {
        Event::Person(p) => Some(p),
        _ => None,
    })
}

fn sorted<T: Ord>(mut rows: Vec<T>) -> Vec<T> {
    rows.sort();
    rows
}

/// q0, pass-through: every bid, unchanged (`SELECT * FROM bid`). Sorted.
pub fn q0(events: &[Event]) -> Vec<Bid> {
    sorted(bids(events).cloned().collect())
}

/// q1, currency conversion: every bid with its price converted from dollar cents to
/// euro cents as `price * 908 / 1000`, truncated (the SQL's `0.908 * price` made
/// integral). Sorted.
pub fn q1(events: &[Event]) -> Vec<Q1Row> {
    sorted(
        bids(events)
            .map(|b| Q1Row {
                auction: b.auction,
                bidder: b.bidder,
                price: b.price * Q1_EURO_NUMERATOR / Q1_EURO_DENOMINATOR,
                date_time: b.date_time,
                extra: b.extra.clone(),
                origin: b.origin,
            })
            .collect(),
    )
}

/// q2, selection: `(auction, price)` of every bid with `auction % 123 == 0`. Sorted.
pub fn q2(events: &[Event]) -> Vec<Q2Row> {
    sorted(
        bids(events)
            .filter(|b| b.auction % Q2_AUCTION_MODULUS == 0)
            .map(|b| Q2Row {
                auction: b.auction,
                price: b.price,
                origin: b.origin,
            })
            .collect(),
    )
}

/// q3, local item suggestion: the unwindowed inner join of persons in state `OR`,
/// `ID` or `CA` with auctions of category 10 on `auction.seller = person.id`,
/// emitting `(name, city, state, auction id)`.
///
/// As an incremental stream join, each matching (person, auction) pair is emitted
/// exactly once, when the second of the two arrives, whichever side that is (the
/// generator can emit an auction before its seller registers). Both sides are kept
/// forever. The canonical form is therefore every matching pair, sorted.
pub fn q3(events: &[Event]) -> Vec<Q3Row> {
    let sellers: Vec<&Person> = persons(events)
        .filter(|p| Q3_STATES.contains(&p.state.as_str()))
        .collect();
    let mut rows = Vec::new();
    for a in auctions(events).filter(|a| a.category == Q3_CATEGORY) {
        for p in sellers.iter().filter(|p| p.id == a.seller) {
            rows.push(Q3Row {
                name: p.name.clone(),
                city: p.city.clone(),
                state: p.state.clone(),
                id: a.id,
            });
        }
    }
    sorted(rows)
}

/// q4, average closing price per category.
///
/// An auction's closing price is the maximum price of the bids on it (`bid.auction
/// = auction.id`) with `auction.date_time <= bid.date_time <= auction.expires`,
/// whether the bid arrives before or after the auction event; an auction without
/// such a bid has no closing price and does not count. An auction closes when event
/// time passes `expires`; at end of input all auctions close. Each close with a
/// price updates its category's `count`, `sum_price` and `avg_price = sum_price /
/// count` (truncated) and emits a [`Q4Row`].
///
/// The canonical form is the final row per category, keyed by category. Auction ids
/// are assumed unique (the generator guarantees it).
pub fn q4(events: &[Event]) -> BTreeMap<u64, Q4Row> {
    let mut bids_by_auction: HashMap<u64, Vec<&Bid>> = HashMap::new();
    for b in bids(events) {
        bids_by_auction.entry(b.auction).or_default().push(b);
    }
    let mut result: BTreeMap<u64, Q4Row> = BTreeMap::new();
    for a in auctions(events) {
        let closing_price = bids_by_auction
            .get(&a.id)
            .into_iter()
            .flatten()
            .filter(|b| a.date_time <= b.date_time && b.date_time <= a.expires)
            .map(|b| b.price)
            .max();
        if let Some(price) = closing_price {
            let row = result.entry(a.category).or_insert(Q4Row {
                category: a.category,
                avg_price: 0,
                count: 0,
                sum_price: 0,
            });
            row.count += 1;
            row.sum_price += price;
            row.avg_price = row.sum_price / row.count;
        }
    }
    result
}

/// The starts of the sliding windows `[start, start + size)` that contain `t`, for
/// starts that are non-negative multiples of `slide`.
fn sliding_window_starts(t: u64, size: u64, slide: u64) -> impl Iterator<Item = u64> {
    let last = t - t % slide;
    (0..size / slide)
        .map_while(move |k| last.checked_sub(k * slide))
        .filter(move |start| start + size > t)
}

/// q5, hot items: over sliding windows of 10 s sliding every 2 s, count the bids per
/// auction; for each window emit every auction whose count equals the window's
/// maximum, as `(window_start, window_end, auction, count)`. Each bid falls in 5
/// windows. Windows without bids emit nothing. Sorted.
pub fn q5(events: &[Event]) -> Vec<Q5Row> {
    let mut counts: BTreeMap<u64, HashMap<u64, u64>> = BTreeMap::new();
    for b in bids(events) {
        for start in sliding_window_starts(b.date_time, Q5_WINDOW_SIZE_MS, Q5_WINDOW_SLIDE_MS) {
            *counts
                .entry(start)
                .or_default()
                .entry(b.auction)
                .or_default() += 1;
        }
    }
    let mut rows = Vec::new();
    for (start, per_auction) in counts {
        let max = per_auction
            .values()
            .copied()
            .max()
            .expect("window has a bid");
        for (&auction, &count) in &per_auction {
            if count == max {
                rows.push(Q5Row {
                    window_start: start,
                    window_end: start + Q5_WINDOW_SIZE_MS,
                    auction,
                    count,
                });
            }
        }
    }
    sorted(rows)
}

/// q7, highest bid: over tumbling windows of 10 s, emit every bid whose price equals
/// the window's maximum bid price, as `(window_start, window_end, auction, bidder,
/// price, date_time)`. Windows without bids emit nothing. Sorted.
pub fn q7(events: &[Event]) -> Vec<Q7Row> {
    let window_of = |t: u64| t - t % Q7_WINDOW_SIZE_MS;
    let mut max_price: HashMap<u64, u64> = HashMap::new();
    for b in bids(events) {
        let max = max_price.entry(window_of(b.date_time)).or_insert(b.price);
        *max = (*max).max(b.price);
    }
    sorted(
        bids(events)
            .filter(|b| max_price[&window_of(b.date_time)] == b.price)
            .map(|b| {
                let start = window_of(b.date_time);
                Q7Row {
                    window_start: start,
                    window_end: start + Q7_WINDOW_SIZE_MS,
                    auction: b.auction,
                    bidder: b.bidder,
                    price: b.price,
                    date_time: b.date_time,
                }
            })
            .collect(),
    )
}

/// q8, new users: over tumbling windows of 10 s, emit `(window_start, id, name)` for
/// every person who registered in the window and is the seller of at least one
/// auction opened in the same window. Following the SQL's `GROUP BY`s, a person is
/// emitted once per window however many auctions they opened in it. Sorted.
pub fn q8(events: &[Event]) -> Vec<Q8Row> {
    let window_of = |t: u64| t - t % Q8_WINDOW_SIZE_MS;
    let sellers: BTreeSet<(u64, u64)> = auctions(events)
        .map(|a| (window_of(a.date_time), a.seller))
        .collect();
    let new_people: BTreeSet<(u64, u64, &str)> = persons(events)
        .map(|p| (window_of(p.date_time), p.id, p.name.as_str()))
        .collect();
    new_people
        .into_iter()
        .filter(|&(start, id, _)| sellers.contains(&(start, id)))
        .map(|(window_start, id, name)| Q8Row {
            window_start,
            id,
            name: name.to_owned(),
        })
        .collect()
}
