//! The Nexmark queries q0, q1, q2, q3, q4, q5, q7 and q8 written on the engine's
//! public API, as a user of Spate would write them.
//!
//! Each query is a function from the stream of [`Event`]s to a stream of result
//! rows ([`rows`](crate::nexmark::rows)); it declares operators only, so the same
//! function runs under the glommio [`Job`](spate::Job) runtime and the
//! deterministic [`Simulation`](spate::internals::sim::Simulation). The semantics are those
//! of [`reference`](crate::nexmark::reference), which the tests hold them to.
//!
//! Shapes (`→` is a chained call on one core, `⇒ key` an exchange by key):
//! - q0, q1, q2: stateless filter/map on the source's core, no exchange.
//! - q3: persons (state OR/ID/CA) ⇒ id and auctions (category 10) ⇒ seller into
//!   one [`CoProcessFunction`]: an incremental inner join keeping both sides.
//! - q4: auctions ⇒ id and bids ⇒ auction into a [`CoProcessFunction`] that
//!   closes each auction with an event-time timer at `expires`, emitting its
//!   highest valid bid; then ⇒ category into a running average.
//! - q5: bids ⇒ auction into sliding 10 s / 2 s count windows, which each core
//!   folds into the window's maximum count and the auctions that reach it when
//!   the window closes; then ⇒ window end into a function combining the cores'
//!   folds, emitted by an event-time timer when the window closes.
//! - q7: bids ⇒ a uniform bucket into tumbling 10 s windows keeping the
//!   bucket's highest bids (parallel pre-aggregation); then ⇒ window end into a
//!   global maximum emitted when the window closes.
//! - q8: persons and auctions ⇒ (window start, person id / seller) into a
//!   [`CoProcessFunction`] that emits the person at the window's end if both
//!   sides met in that window.
//!
//! Timestamps of output records: q0–q3 rows carry the timestamp of the input
//! event that produced them; q5, q7 and q8 rows carry their window's `end - 1`
//! (the time of the closing timer), and q4 rows the auction's `expires`. See
//! [`Query::emitted_by_timer`].

use std::fmt;
use std::str::FromStr;

use spate::time::{TimeDomain, Timestamp};
use spate::window::{Aggregate, Count, WindowAssigner, WindowFold, WindowResult};
use spate::{
    CoProcessFunction, KeyedContext, KeyedProcessFunction, ListState, ProcessError, Stream,
    ValueState,
};

use crate::nexmark::model::{Bid, Event};
use crate::nexmark::rows::{
    Q1Row, Q2Row, Q3Row, Q4Row, Q5Row, Q7Row, Q8Row, Q1_EURO_DENOMINATOR, Q1_EURO_NUMERATOR,
    Q2_AUCTION_MODULUS, Q3_CATEGORY, Q3_STATES, Q5_WINDOW_SIZE_MS, Q5_WINDOW_SLIDE_MS,
    Q7_WINDOW_SIZE_MS, Q8_WINDOW_SIZE_MS,
};

/// One of the implemented Nexmark queries. Parsed from and displayed as `"q0"`…`"q8"`
/// (there is no q6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Query {
    /// Pass-through.
    Q0,
    /// Currency conversion.
    Q1,
    /// Selection.
    Q2,
    /// Local item suggestion (incremental join).
    Q3,
    /// Average closing price per category.
    Q4,
    /// Hot items (sliding window).
    Q5,
    /// Highest bid (tumbling window).
    Q7,
    /// New users (windowed join).
    Q8,
}

impl Query {
    /// Every query, in order.
    pub const ALL: [Query; 8] = [
        Query::Q0,
        Query::Q1,
        Query::Q2,
        Query::Q3,
        Query::Q4,
        Query::Q5,
        Query::Q7,
        Query::Q8,
    ];

    /// Whether the query's rows are emitted by an event-time timer at their
    /// timestamp `ts`. Such a timer fires once the watermark reaches `ts`, that is
    /// once every source has emitted an event at `ts + 1` or later, so a row's
    /// latency is measured from `ts + 1` ms rather than from `ts`.
    pub fn emitted_by_timer(self) -> bool {
        matches!(self, Query::Q4 | Query::Q5 | Query::Q7 | Query::Q8)
    }
}

impl fmt::Display for Query {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Query::Q0 => "q0",
            Query::Q1 => "q1",
            Query::Q2 => "q2",
            Query::Q3 => "q3",
            Query::Q4 => "q4",
            Query::Q5 => "q5",
            Query::Q7 => "q7",
            Query::Q8 => "q8",
        };
        f.write_str(name)
    }
}

/// A query name that is not one of [`Query::ALL`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownQuery(pub String);

impl fmt::Display for UnknownQuery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown query `{}` (expected one of q0, q1, q2, q3, q4, q5, q7, q8)",
            self.0
        )
    }
}

impl std::error::Error for UnknownQuery {}

impl FromStr for Query {
    type Err = UnknownQuery;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Query::ALL
            .into_iter()
            .find(|q| q.to_string().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| UnknownQuery(s.to_string()))
    }
}

fn bids(events: &Stream<Event>) -> Stream<Bid> {
    events.flat_map(|e| match e {
        Event::Bid(b) => Some(b),
        _ => None,
    })
}

/// q0, pass-through: every bid.
pub fn q0(events: &Stream<Event>) -> Stream<Bid> {
    bids(events)
}

/// q1, currency conversion: every bid with its price in euro cents.
pub fn q1(events: &Stream<Event>) -> Stream<Q1Row> {
    events.flat_map(|e| match e {
        Event::Bid(b) => Some(Q1Row {
            auction: b.auction,
            bidder: b.bidder,
            price: b.price * Q1_EURO_NUMERATOR / Q1_EURO_DENOMINATOR,
            date_time: b.date_time,
            extra: b.extra,
            origin: b.origin,
        }),
        _ => None,
    })
}

/// q2, selection: `(auction, price)` of the bids on auctions whose id is a multiple
/// of 123.
pub fn q2(events: &Stream<Event>) -> Stream<Q2Row> {
    events.flat_map(|e| match e {
        Event::Bid(b) if b.auction % Q2_AUCTION_MODULUS == 0 => Some(Q2Row {
            auction: b.auction,
            price: b.price,
            origin: b.origin,
        }),
        _ => None,
    })
}

/// A seller of q3: `(id, name, city, state)`.
type Q3Person = (u64, String, String, String);

/// q3's join: keyed by person id; a person is kept forever, as are the auctions
/// that arrived before their seller.
struct Q3Join {
    /// `(name, city, state)` of the person, once seen.
    person: ValueState<u64, (String, String, String)>,
    /// Auction ids that arrived before the person.
    pending: ListState<u64, u64>,
}

impl CoProcessFunction<u64, Q3Person, (u64, u64), Q3Row> for Q3Join {
    fn process_element1(
        &mut self,
        (_, name, city, state): Q3Person,
        ctx: &mut KeyedContext<'_, u64, Q3Row>,
    ) -> Result<(), ProcessError> {
        let waiting = self.pending.get(ctx);
        self.pending.clear(ctx);
        for id in waiting {
            ctx.emit(Q3Row {
                name: name.clone(),
                city: city.clone(),
                state: state.clone(),
                id,
            });
        }
        self.person.set(ctx, (name, city, state));
        Ok(())
    }

    fn process_element2(
        &mut self,
        (_, auction): (u64, u64),
        ctx: &mut KeyedContext<'_, u64, Q3Row>,
    ) -> Result<(), ProcessError> {
        match self.person.get(ctx) {
            Some((name, city, state)) => ctx.emit(Q3Row {
                name,
                city,
                state,
                id: auction,
            }),
            None => self.pending.add(ctx, auction),
        }
        Ok(())
    }
}

/// q3, local item suggestion: persons in OR, ID or CA joined with the auctions of
/// category 10 they sell; each pair is emitted once, when its second side arrives.
pub fn q3(events: &Stream<Event>) -> Stream<Q3Row> {
    let persons = events.flat_map(|e| match e {
        Event::Person(p) if Q3_STATES.contains(&p.state.as_str()) => {
            Some((p.id, p.name, p.city, p.state))
        }
        _ => None,
    });
    let auctions = events.flat_map(|e| match e {
        Event::Auction(a) if a.category == Q3_CATEGORY => Some((a.seller, a.id)),
        _ => None,
    });
    persons
        .key_by(|p: &Q3Person| p.0)
        .connect(&auctions.key_by(|a: &(u64, u64)| a.0))
        .process("q3-join", |state| Q3Join {
            person: state.value_state("person"),
            pending: state.list_state("pending-auctions"),
        })
}

/// An auction as q4 needs it: `(id, date_time, expires, category)`.
type Q4Auction = (u64, u64, u64, u64);
/// A bid as q4 needs it: `(auction, price, date_time)`.
type Q4Bid = (u64, u64, u64);

/// q4's first stage, keyed by auction id: the auction's highest valid bid, emitted
/// as `(category, price)` when event time passes `expires`.
struct Q4Close {
    /// `(date_time, expires, category, highest valid price)` of an open auction.
    auction: ValueState<u64, (u64, u64, u64, Option<u64>)>,
    /// `(date_time, price)` of bids that arrived before their auction.
    early_bids: ListState<u64, (u64, u64)>,
}

impl CoProcessFunction<u64, Q4Auction, Q4Bid, (u64, u64)> for Q4Close {
    fn process_element1(
        &mut self,
        (_, opened, expires, category): Q4Auction,
        ctx: &mut KeyedContext<'_, u64, (u64, u64)>,
    ) -> Result<(), ProcessError> {
        let early = self.early_bids.get(ctx);
        self.early_bids.clear(ctx);
        let best = early
            .into_iter()
            .filter(|&(t, _)| opened <= t && t <= expires)
            .map(|(_, price)| price)
            .max();
        self.auction.set(ctx, (opened, expires, category, best));
        // The auction arrived before the watermark reached its opening time, so
        // `expires` (later still) is ahead of the watermark.
        ctx.register_event_time_timer(expires);
        Ok(())
    }

    fn process_element2(
        &mut self,
        (_, price, t): Q4Bid,
        ctx: &mut KeyedContext<'_, u64, (u64, u64)>,
    ) -> Result<(), ProcessError> {
        if let Some((opened, expires, category, best)) = self.auction.get(ctx) {
            if opened <= t && t <= expires && best.is_none_or(|b| price > b) {
                self.auction
                    .set(ctx, (opened, expires, category, Some(price)));
            }
            return Ok(());
        }
        // No open auction. If the watermark has passed the bid's time, its auction
        // either opened at or before the bid (then it would be here, or closed at
        // `expires < t`) or opens after it: the bid can never count.
        if t <= ctx.watermark() {
            return Ok(());
        }
        self.early_bids.add(ctx, (t, price));
        ctx.register_event_time_timer(t);
        Ok(())
    }

    fn on_timer(
        &mut self,
        timestamp: Timestamp,
        _domain: TimeDomain,
        ctx: &mut KeyedContext<'_, u64, (u64, u64)>,
    ) -> Result<(), ProcessError> {
        if let Some((_, expires, category, best)) = self.auction.get(ctx) {
            if timestamp == expires {
                self.auction.clear(ctx);
                if let Some(price) = best {
                    ctx.emit((category, price));
                }
            }
            // Otherwise a stale timer of an early bid the auction already took.
            return Ok(());
        }
        // The auction has not come: early bids up to here never will count.
        // (An emptied list is dropped from state.)
        self.early_bids
            .update(ctx, |bids| bids.retain(|&(t, _)| t > timestamp));
        Ok(())
    }
}

/// q4's second stage, keyed by category: the running average of closing prices.
struct Q4Average {
    /// `(count, sum_price)`.
    totals: ValueState<u64, (u64, u64)>,
}

impl KeyedProcessFunction<u64, (u64, u64), Q4Row> for Q4Average {
    fn process_element(
        &mut self,
        (category, price): (u64, u64),
        ctx: &mut KeyedContext<'_, u64, Q4Row>,
    ) -> Result<(), ProcessError> {
        let (count, sum_price) = self.totals.update(
            ctx,
            || (0, 0),
            |(count, sum)| {
                *count += 1;
                *sum += price;
                (*count, *sum)
            },
        );
        ctx.emit(Q4Row {
            category,
            avg_price: sum_price / count,
            count,
            sum_price,
        });
        Ok(())
    }
}

/// q4, average closing price per category: each auction closes at `expires` with
/// its highest bid made between its opening and `expires`; every close updates
/// and emits its category's running average.
pub fn q4(events: &Stream<Event>) -> Stream<Q4Row> {
    let auctions = events.flat_map(|e| match e {
        Event::Auction(a) => Some((a.id, a.date_time, a.expires, a.category)),
        _ => None,
    });
    let bids = events.flat_map(|e| match e {
        Event::Bid(b) => Some((b.auction, b.price, b.date_time)),
        _ => None,
    });
    auctions
        .key_by(|a: &Q4Auction| a.0)
        .connect(&bids.key_by(|b: &Q4Bid| b.0))
        .process("q4-close", |state| Q4Close {
            auction: state.value_state("auction"),
            early_bids: state.list_state("early-bids"),
        })
        .key_by(|c: &(u64, u64)| c.0)
        .process("q4-average", |state| Q4Average {
            totals: state.value_state("totals"),
        })
}

/// The second stage of q5, keyed by window end: the window's maximum count and
/// the auctions that reach it, emitted when the window closes.
struct Q5Hottest {
    /// `(maximum count, auctions with that count)`.
    best: ValueState<u64, Q5Best>,
}

/// The highest count of a window and the auctions that reach it.
type Q5Best = (u64, Vec<u64>);

/// A window's [`Q5Best`] among some of the auctions, as it crosses to q5's
/// second stage: `(window end, best)`.
type Q5Partial = (u64, Q5Best);

/// Adds `auction`, counted `count` times in the window, to `best`.
fn q5_add(best: &mut Q5Best, auction: u64, count: u64) {
    if count > best.0 || best.1.is_empty() {
        best.0 = count;
        best.1.clear();
    }
    if count == best.0 {
        best.1.push(auction);
    }
}

/// Adds `other`'s auctions to `best` (both bests of the same window, over
/// disjoint auctions).
fn q5_merge(best: &mut Q5Best, (count, auctions): Q5Best) {
    if count > best.0 || best.1.is_empty() {
        *best = (count, auctions);
    } else if count == best.0 {
        best.1.extend(auctions);
    }
}

impl KeyedProcessFunction<u64, Q5Partial, Q5Row> for Q5Hottest {
    fn process_element(
        &mut self,
        (end, partial): Q5Partial,
        ctx: &mut KeyedContext<'_, u64, Q5Row>,
    ) -> Result<(), ProcessError> {
        let first = self.best.update(
            ctx,
            || (0, Vec::new()),
            |best| {
                let first = best.1.is_empty();
                q5_merge(best, partial);
                first
            },
        );
        if first {
            // Results carry `end - 1`, which the watermark has not reached yet.
            ctx.register_event_time_timer(end - 1);
        }
        Ok(())
    }

    fn on_timer(
        &mut self,
        _timestamp: Timestamp,
        _domain: TimeDomain,
        ctx: &mut KeyedContext<'_, u64, Q5Row>,
    ) -> Result<(), ProcessError> {
        let window_end = *ctx.key();
        if let Some((count, auctions)) = self.best.clear(ctx) {
            for auction in auctions {
                ctx.emit(Q5Row {
                    window_start: window_end - Q5_WINDOW_SIZE_MS,
                    window_end,
                    auction,
                    count,
                });
            }
        }
        Ok(())
    }
}

/// q5, hot items: per sliding window of 10 s every 2 s, the auctions with the most
/// bids. Counts are kept per 2 s pane (one update per bid); when a window
/// closes, each core folds its auctions' counts into the window's best
/// ([`WindowedStream::aggregate_fold`](spate::window::WindowedStream::aggregate_fold):
/// nothing is emitted per auction), and the window's core combines one
/// partial result per core. Only the auction id crosses cores (a SQL
/// planner's projection: the query reads nothing else of a bid, and its
/// time is the record's).
pub fn q5(events: &Stream<Event>) -> Stream<Q5Row> {
    bids(events)
        .map(|b: Bid| b.auction)
        .key_by(|auction: &u64| *auction)
        .window(WindowAssigner::sliding(
            Q5_WINDOW_SIZE_MS,
            Q5_WINDOW_SLIDE_MS,
        ))
        .aggregate_fold(
            "q5-count",
            Count,
            || (0, Vec::new()),
            |best: &mut Q5Best, auction: &u64, count: u64| q5_add(best, *auction, count),
        )
        .map(|f: WindowFold<Q5Best>| (f.end, f.value))
        .key_by(|p: &Q5Partial| p.0)
        .process("q5-hottest", |state| Q5Hottest {
            best: state.value_state("best"),
        })
}

/// Buckets q7's pre-aggregation spreads bids over. More buckets than cores
/// spreads the load evenly; each bucket sends one partial result per window.
pub const Q7_BUCKETS: u64 = 64;

/// The bucket of a bid for q7's pre-aggregation: a mix of its fields, so that
/// hot auctions and bidders do not pile onto one core.
fn q7_bucket(b: &Bid) -> u64 {
    let mut x = b.price ^ b.date_time.rotate_left(21) ^ b.bidder.rotate_left(42) ^ b.auction;
    x = (x ^ (x >> 33)).wrapping_mul(0xff51_afd7_ed55_8ccd);
    x = (x ^ (x >> 33)).wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    (x ^ (x >> 33)) % Q7_BUCKETS
}

/// The highest bids of a set: `(price, [(auction, bidder, date_time)])`.
type Q7Best = (u64, Vec<(u64, u64, u64)>);

fn q7_add(best: &mut Q7Best, price: u64, bid: (u64, u64, u64)) {
    if price > best.0 || best.1.is_empty() {
        best.0 = price;
        best.1.clear();
    }
    if price == best.0 {
        best.1.push(bid);
    }
}

/// q7's second stage, keyed by window end: the global highest bids. Its input is
/// `(window end, a bucket's highest bids)`.
struct Q7Highest {
    best: ValueState<u64, Q7Best>,
}

impl KeyedProcessFunction<u64, (u64, Q7Best), Q7Row> for Q7Highest {
    fn process_element(
        &mut self,
        (end, (price, partial)): (u64, Q7Best),
        ctx: &mut KeyedContext<'_, u64, Q7Row>,
    ) -> Result<(), ProcessError> {
        let first = self.best.update(
            ctx,
            || (0, Vec::new()),
            |best| {
                let first = best.1.is_empty();
                for bid in partial {
                    q7_add(best, price, bid);
                }
                first
            },
        );
        if first {
            ctx.register_event_time_timer(end - 1);
        }
        Ok(())
    }

    fn on_timer(
        &mut self,
        _timestamp: Timestamp,
        _domain: TimeDomain,
        ctx: &mut KeyedContext<'_, u64, Q7Row>,
    ) -> Result<(), ProcessError> {
        let window_end = *ctx.key();
        if let Some((price, best)) = self.best.clear(ctx) {
            for (auction, bidder, date_time) in best {
                ctx.emit(Q7Row {
                    window_start: window_end - Q7_WINDOW_SIZE_MS,
                    window_end,
                    auction,
                    bidder,
                    price,
                    date_time,
                });
            }
        }
        Ok(())
    }
}

/// q7, highest bid: per tumbling 10 s window, every bid with the window's highest
/// price. Bids are pre-aggregated per window in [`Q7_BUCKETS`] buckets spread over
/// the cores, and the buckets' winners meet on the window's core.
pub fn q7(events: &Stream<Event>) -> Stream<Q7Row> {
    bids(events)
        .key_by(q7_bucket)
        .window(WindowAssigner::tumbling(Q7_WINDOW_SIZE_MS))
        .aggregate(
            "q7-bucket-max",
            Aggregate::new(
                || (0, Vec::new()),
                |best: &mut Q7Best, b: &Bid| {
                    q7_add(best, b.price, (b.auction, b.bidder, b.date_time));
                },
                |best: &Q7Best| best.clone(),
            ),
        )
        .map(|r: WindowResult<u64, Q7Best>| (r.end, r.value))
        .key_by(|r: &(u64, Q7Best)| r.0)
        .process("q7-max", |state| Q7Highest {
            best: state.value_state("best"),
        })
}

/// q8's key: `(window start, person id)`.
type Q8Key = (u64, u64);

/// q8's join, keyed by (window start, person id): the person's name if they
/// registered in the window, and whether they opened an auction in it.
struct Q8Join {
    /// `(name, sold)`.
    seen: ValueState<Q8Key, (Option<String>, bool)>,
}

impl Q8Join {
    fn arrive(
        &mut self,
        ctx: &mut KeyedContext<'_, Q8Key, Q8Row>,
        f: impl FnOnce(&mut (Option<String>, bool)),
    ) {
        let window_start = ctx.key().0;
        let first = self.seen.update(
            ctx,
            || (None, false),
            |seen| {
                let first = seen.0.is_none() && !seen.1;
                f(seen);
                first
            },
        );
        if first {
            ctx.register_event_time_timer(window_start + Q8_WINDOW_SIZE_MS - 1);
        }
    }
}

impl CoProcessFunction<Q8Key, (Q8Key, String), Q8Key, Q8Row> for Q8Join {
    fn process_element1(
        &mut self,
        (_, name): (Q8Key, String),
        ctx: &mut KeyedContext<'_, Q8Key, Q8Row>,
    ) -> Result<(), ProcessError> {
        self.arrive(ctx, |seen| seen.0 = Some(name));
        Ok(())
    }

    fn process_element2(
        &mut self,
        _auction: Q8Key,
        ctx: &mut KeyedContext<'_, Q8Key, Q8Row>,
    ) -> Result<(), ProcessError> {
        self.arrive(ctx, |seen| seen.1 = true);
        Ok(())
    }

    fn on_timer(
        &mut self,
        _timestamp: Timestamp,
        _domain: TimeDomain,
        ctx: &mut KeyedContext<'_, Q8Key, Q8Row>,
    ) -> Result<(), ProcessError> {
        let (window_start, id) = *ctx.key();
        if let Some((Some(name), true)) = self.seen.clear(ctx) {
            ctx.emit(Q8Row {
                window_start,
                id,
                name,
            });
        }
        Ok(())
    }
}

/// q8, new users: per tumbling 10 s window, the persons who registered in it and
/// opened an auction in it, emitted once when the window closes.
pub fn q8(events: &Stream<Event>) -> Stream<Q8Row> {
    let window_of = |t: u64| t - t % Q8_WINDOW_SIZE_MS;
    let persons = events.flat_map(move |e| match e {
        Event::Person(p) => Some(((window_of(p.date_time), p.id), p.name)),
        _ => None,
    });
    let sellers = events.flat_map(move |e| match e {
        Event::Auction(a) => Some((window_of(a.date_time), a.seller)),
        _ => None,
    });
    persons
        .key_by(|p: &(Q8Key, String)| p.0)
        .connect(&sellers.key_by(|s: &Q8Key| *s))
        .process("q8-join", |state| Q8Join {
            seen: state.value_state("seen"),
        })
}
