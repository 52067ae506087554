//! The reference queries on small hand-made inputs whose answers were worked out by
//! hand (see the comments), plus a check that every query finds something in
//! generated data.

use std::borrow::Cow;

use spate_bench::nexmark::reference::{q0, q1, q2, q3, q4, q5, q7, q8};
use spate_bench::nexmark::rows::{Q1Row, Q2Row, Q3Row, Q4Row, Q5Row, Q7Row, Q8Row};
use spate_bench::nexmark::{Auction, Bid, Event, Generator, GeneratorConfig, Origin, Person};

fn person(id: u64, name: &str, state: &str, date_time: u64) -> Event {
    Event::Person(Person {
        id,
        name: name.into(),
        email_address: format!("{id}@example.com"),
        credit_card: "0000 0000 0000 0000".into(),
        city: format!("city-{id}"),
        state: state.into(),
        date_time,
        extra: String::new(),
    })
}

fn auction(id: u64, seller: u64, category: u64, date_time: u64, expires: u64) -> Event {
    Event::Auction(Auction {
        id,
        item_name: format!("item-{id}"),
        description: String::new(),
        initial_bid: 1,
        reserve: 2,
        date_time,
        expires,
        seller,
        category,
        extra: String::new(),
    })
}

fn bid_struct(auction: u64, bidder: u64, price: u64, date_time: u64) -> Bid {
    Bid {
        auction,
        bidder,
        price,
        channel: Cow::Borrowed("Google"),
        url: Cow::Borrowed("https://example.com"),
        date_time,
        extra: String::new(),
        origin: Origin::default(),
    }
}

fn bid(auction: u64, bidder: u64, price: u64, date_time: u64) -> Event {
    Event::Bid(bid_struct(auction, bidder, price, date_time))
}

#[test]
fn q0_passes_every_bid_through() {
    let events = [
        bid(2, 20, 200, 5),
        person(1, "Ann", "OR", 6),
        auction(3, 1, 10, 7, 8),
        bid(1, 10, 100, 9),
    ];
    // Sorted by auction first.
    assert_eq!(
        q0(&events),
        vec![bid_struct(1, 10, 100, 9), bid_struct(2, 20, 200, 5)]
    );
    assert_eq!(q0(&[]), vec![]);
}

#[test]
fn q1_converts_to_euros_truncating() {
    let events = [bid(1, 10, 1000, 5), bid(2, 20, 1, 6), bid(3, 30, 12_345, 7)];
    let row = |auction, bidder, price, date_time| Q1Row {
        auction,
        bidder,
        price,
        date_time,
        extra: String::new(),
        origin: Origin::default(),
    };
    // 1000 * 0.908 = 908; 1 * 0.908 = 0.908 -> 0; 12345 * 0.908 = 11209.26 -> 11209.
    assert_eq!(
        q1(&events),
        vec![row(1, 10, 908, 5), row(2, 20, 0, 6), row(3, 30, 11_209, 7)]
    );
}

#[test]
fn q2_selects_auctions_divisible_by_123() {
    let events = [
        bid(1107, 1, 5, 1), // 123 * 9
        bid(1108, 1, 6, 2),
        bid(1230, 2, 7, 3), // 123 * 10
        bid(1231, 2, 8, 4),
        auction(1230, 1, 10, 0, 9), // not a bid
        bid(0, 3, 9, 5),            // 0 is a multiple of 123
    ];
    let row = |auction, price| Q2Row {
        auction,
        price,
        origin: Origin::default(),
    };
    assert_eq!(q2(&events), vec![row(0, 9), row(1107, 5), row(1230, 7)]);
}

#[test]
fn q3_joins_sellers_in_or_id_ca_with_category_10() {
    let events = [
        person(1, "Ann", "OR", 1),
        auction(100, 1, 10, 2, 50), // Ann in OR, category 10: match
        person(2, "Bob", "WA", 3),
        auction(101, 2, 10, 4, 50), // WA: no
        auction(103, 3, 10, 5, 50), // before its seller registers: match when Cy arrives
        auction(102, 3, 11, 6, 50), // category 11: no
        person(3, "Cy", "CA", 7),
        person(4, "Di", "or", 8), // lower-case state: no
        auction(104, 4, 10, 9, 50),
        auction(105, 9, 10, 10, 50), // no such person
        person(5, "Ed", "ID", 11),
        auction(106, 5, 10, 12, 50), // ID: match
        auction(107, 1, 10, 13, 50), // Ann again: match
    ];
    let row = |name: &str, state: &str, id, city_id: u64| Q3Row {
        name: name.into(),
        city: format!("city-{city_id}"),
        state: state.into(),
        id,
    };
    assert_eq!(
        q3(&events),
        vec![
            row("Ann", "OR", 100, 1),
            row("Ann", "OR", 107, 1),
            row("Cy", "CA", 103, 3),
            row("Ed", "ID", 106, 5),
        ]
    );
}

#[test]
fn q4_averages_closing_prices_per_category() {
    let events = [
        // A bid on auction 3 that arrives before the auction itself, inside its span.
        bid(3, 9, 9, 3600),
        auction(1, 100, 10, 1000, 2000),
        auction(2, 100, 10, 1000, 5000),
        auction(3, 100, 11, 3000, 4000),
        auction(4, 100, 12, 0, 100), // no bids: does not count
        bid(1, 9, 500, 999),         // before auction 1 opens: ignored
        bid(1, 9, 50, 1000),         // at the opening time: counts
        bid(2, 9, 10, 1500),
        bid(1, 9, 70, 2000),  // at the expiry time: counts
        bid(1, 9, 999, 2001), // after expiry: ignored
        bid(3, 9, 7, 3500),
        bid(2, 9, 31, 4000),
        bid(5, 9, 1_000, 50), // no such auction
    ];
    // Category 10: auction 1 closes at 70, auction 2 at 31: sum 101, count 2, avg 50.
    // Category 11: auction 3 closes at max(9, 7) = 9.
    let got = q4(&events);
    let expected = [
        Q4Row {
            category: 10,
            avg_price: 50,
            count: 2,
            sum_price: 101,
        },
        Q4Row {
            category: 11,
            avg_price: 9,
            count: 1,
            sum_price: 9,
        },
    ];
    assert_eq!(got.values().cloned().collect::<Vec<_>>(), expected);
    assert_eq!(got.keys().copied().collect::<Vec<_>>(), [10, 11]);
}

#[test]
fn q5_finds_the_hottest_auctions_per_sliding_window() {
    let events = [
        bid(1, 9, 1, 0),
        bid(1, 9, 1, 1000),
        bid(2, 9, 1, 2500),
        person(7, "Ann", "OR", 5000), // not a bid: ignored
        bid(2, 9, 1, 9999),
        bid(3, 9, 1, 10_000),
        bid(3, 9, 1, 11_000),
        bid(3, 9, 1, 11_500),
    ];
    // Windows [s, s + 10 s) for s a multiple of 2 s, s >= 0:
    //   s=0:      auction 1 x2 (0, 1000), auction 2 x2 (2500, 9999)     -> tie, both
    //   s=2000:   auction 2 x2 (2500, 9999), auction 3 x3                -> 3
    //   s=4000, 6000, 8000: auction 2 x1 (9999), auction 3 x3            -> 3
    //   s=10000:  auction 3 x3                                           -> 3
    let row = |window_start: u64, auction, count| Q5Row {
        window_start,
        window_end: window_start + 10_000,
        auction,
        count,
    };
    assert_eq!(
        q5(&events),
        vec![
            row(0, 1, 2),
            row(0, 2, 2),
            row(2000, 3, 3),
            row(4000, 3, 3),
            row(6000, 3, 3),
            row(8000, 3, 3),
            row(10_000, 3, 3),
        ]
    );
}

#[test]
fn q7_finds_the_highest_bids_per_tumbling_window() {
    let events = [
        bid(1, 1, 50, 100),
        bid(2, 2, 80, 9999),
        bid(3, 3, 80, 5000), // ties with the bid on auction 2
        bid(4, 4, 10, 10_000),
        auction(9, 9, 10, 15_000, 16_000), // not a bid
        bid(5, 5, 7, 25_000),              // windows without bids in between: nothing
    ];
    let row = |window_start: u64, auction, bidder, price, date_time| Q7Row {
        window_start,
        window_end: window_start + 10_000,
        auction,
        bidder,
        price,
        date_time,
    };
    assert_eq!(
        q7(&events),
        vec![
            row(0, 2, 2, 80, 9999),
            row(0, 3, 3, 80, 5000),
            row(10_000, 4, 4, 10, 10_000),
            row(20_000, 5, 5, 7, 25_000),
        ]
    );
}

#[test]
fn q8_finds_people_selling_in_their_registration_window() {
    let events = [
        auction(104, 4, 10, 10, 20), // Di sells before registering, same window: match
        person(4, "Di", "WA", 500),
        person(1, "Ann", "OR", 1000),
        auction(100, 1, 10, 5000, 6000), // Ann, window 0: match
        auction(101, 1, 11, 6000, 7000), // Ann again: still one row
        person(2, "Bob", "CA", 9000),
        auction(102, 2, 10, 10_000, 11_000), // Bob, but window 10 s: no
        person(3, "Cy", "ID", 12_000),
        auction(103, 3, 10, 19_999, 20_000), // Cy, window 10 s: match
        auction(105, 8, 10, 19_999, 20_000), // no such person
    ];
    let row = |window_start, id, name: &str| Q8Row {
        window_start,
        id,
        name: name.into(),
    };
    assert_eq!(
        q8(&events),
        vec![row(0, 1, "Ann"), row(0, 4, "Di"), row(10_000, 3, "Cy")]
    );
}

#[test]
fn every_query_finds_rows_in_generated_events() {
    // 300,000 events at 10,000 events/s are 30 s of event time.
    let events: Vec<Event> = Generator::new(GeneratorConfig::default(), 1)
        .take(300_000)
        .collect();
    assert_eq!(q0(&events).len(), 300_000 / 50 * 46);
    assert_eq!(q1(&events).len(), 300_000 / 50 * 46);
    assert!(!q2(&events).is_empty());
    assert!(!q3(&events).is_empty());
    let q4 = q4(&events);
    assert_eq!(q4.keys().copied().collect::<Vec<_>>(), [10, 11, 12, 13, 14]);
    let q5 = q5(&events);
    // Event times run from the base time (a multiple of 10 s) to base + 30 s inclusive
    // (event 299,999 rounds up to 30,000 ms), so windows start at base - 8 s, base -
    // 6 s, ..., base + 30 s: 20 windows.
    let windows: std::collections::BTreeSet<u64> = q5.iter().map(|r| r.window_start).collect();
    assert_eq!(windows.len(), 20);
    let q7 = q7(&events);
    assert!(q7.len() >= 3);
    assert!(!q8(&events).is_empty());
}
