//! JSON-lines output: the exact line format, round trips, and determinism; plus the
//! rkyv round trip of events.

use std::borrow::Cow;

use spate_bench::nexmark::json::{
    gen_jsonl, read_events_jsonl, write_event_jsonl, write_events_jsonl, write_rows_jsonl,
};
use spate_bench::nexmark::rows::Q5Row;
use spate_bench::nexmark::{Auction, Bid, Event, Generator, GeneratorConfig, Origin, Person};

#[test]
fn event_lines_have_a_type_tag_and_fixed_field_order() {
    let events = [
        Event::Person(Person {
            id: 1000,
            name: "Ann Smith".into(),
            email_address: "a@b.com".into(),
            credit_card: "1234 5678 9012 3456".into(),
            city: "Bend".into(),
            state: "OR".into(),
            date_time: 7,
            extra: String::new(),
        }),
        Event::Auction(Auction {
            id: 1001,
            item_name: "x".into(),
            description: "y".into(),
            initial_bid: 1,
            reserve: 2,
            date_time: 8,
            expires: 9,
            seller: 1000,
            category: 10,
            extra: String::new(),
        }),
        Event::Bid(Bid {
            auction: 1001,
            bidder: 1000,
            price: 5,
            channel: Cow::Borrowed("Google"),
            url: Cow::Borrowed("u"),
            date_time: 9,
            extra: String::new(),
            origin: Origin::default(),
        }),
    ];
    let mut out = Vec::new();
    write_events_jsonl(&events, &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert_eq!(
        text,
        concat!(
            r#"{"type":"person","id":1000,"name":"Ann Smith","email_address":"a@b.com","credit_card":"1234 5678 9012 3456","city":"Bend","state":"OR","date_time":7,"extra":""}"#,
            "\n",
            r#"{"type":"auction","id":1001,"item_name":"x","description":"y","initial_bid":1,"reserve":2,"date_time":8,"expires":9,"seller":1000,"category":10,"extra":""}"#,
            "\n",
            r#"{"type":"bid","auction":1001,"bidder":1000,"price":5,"channel":"Google","url":"u","date_time":9,"extra":""}"#,
            "\n",
        )
    );
    assert_eq!(read_events_jsonl(text.as_bytes()).unwrap(), events);
}

#[test]
fn generated_events_round_trip_through_json() {
    let events: Vec<Event> = Generator::new(GeneratorConfig::default(), 4)
        .take(5_000)
        .collect();
    let mut out = Vec::new();
    write_events_jsonl(&events, &mut out).unwrap();
    assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 5_000);
    assert_eq!(read_events_jsonl(&out[..]).unwrap(), events);
}

#[test]
fn gen_jsonl_is_deterministic_and_equals_the_generator() {
    let mut a = Vec::new();
    let mut b = Vec::new();
    gen_jsonl(1_000, 17, &mut a).unwrap();
    gen_jsonl(1_000, 17, &mut b).unwrap();
    assert_eq!(a, b);
    let mut expected = Vec::new();
    for event in Generator::new(GeneratorConfig::default(), 17).take(1_000) {
        write_event_jsonl(&event, &mut expected).unwrap();
    }
    assert_eq!(a, expected);
    let mut other_seed = Vec::new();
    gen_jsonl(1_000, 18, &mut other_seed).unwrap();
    assert_ne!(a, other_seed);
}

#[test]
fn bad_lines_are_reported_with_their_number() {
    let err = read_events_jsonl(&b"\n{\"type\":\"bid\"}\n"[..]).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    assert!(err.to_string().starts_with("line 2:"), "{err}");
}

#[test]
fn rows_serialize_in_field_order() {
    let rows = [Q5Row {
        window_start: 0,
        window_end: 10_000,
        auction: 1000,
        count: 3,
    }];
    let mut out = Vec::new();
    write_rows_jsonl(&rows, &mut out).unwrap();
    assert_eq!(
        out,
        b"{\"window_start\":0,\"window_end\":10000,\"auction\":1000,\"count\":3}\n"
    );
}

#[test]
fn events_round_trip_through_rkyv() {
    let events: Vec<Event> = Generator::new(GeneratorConfig::default(), 2)
        .take(200)
        .collect();
    for event in &events {
        let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(event).unwrap();
        let back = rkyv::from_bytes::<Event, rkyv::rancor::Error>(&bytes).unwrap();
        assert_eq!(&back, event);
    }
}
