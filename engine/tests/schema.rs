//! The schema is part of what a restore checks: a job whose state type (or
//! the type of the records an unaligned checkpoint persisted in flight)
//! changed in a way its archived layout shows is refused with an error naming
//! the operator, the state and the field; a type that was only renamed
//! restores. Each run is the seeded simulator on simulated storage: a first
//! job checkpoints and crashes, a second job is built on the crash image.

use spate::internals::sim::{SimReport, Simulation};
use spate::source::VecSource;
use spate::{
    CheckpointConfig, CheckpointMode, Dataflow, JobConfig, JobError, KeyedContext, RestoreError,
    WatermarkStrategy,
};
use spate_storage::SimIo;
use std::sync::Arc;

/// Version 1 of a job's state: what the first run writes.
#[derive(Clone, Debug, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, spate::Schema)]
struct Session {
    user: String,
    clicks: u64,
    address: Address,
}

#[derive(Clone, Debug, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, spate::Schema)]
struct Address {
    city: String,
    zip: u32,
}

mod retyped {
    //! `Address::zip` became a string.
    #[derive(Clone, Debug, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, spate::Schema)]
    pub struct Session {
        pub user: String,
        pub clicks: u64,
        pub address: Address,
    }

    #[derive(Clone, Debug, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, spate::Schema)]
    pub struct Address {
        pub city: String,
        pub zip: String,
    }
}

mod extended {
    //! A field added: an optional one, which rkyv's fixed layout still
    //! cannot read from the old bytes.
    #[derive(Clone, Debug, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, spate::Schema)]
    pub struct Session {
        pub user: String,
        pub clicks: u64,
        pub address: Address,
        pub referrer: Option<String>,
    }

    #[derive(Clone, Debug, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, spate::Schema)]
    pub struct Address {
        pub city: String,
        pub zip: u32,
    }
}

mod renamed {
    //! The same layout under other type names: compatible.
    #[derive(Clone, Debug, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, spate::Schema)]
    pub struct Visit {
        pub user: String,
        pub clicks: u64,
        pub address: Place,
    }

    #[derive(Clone, Debug, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, spate::Schema)]
    pub struct Place {
        pub city: String,
        pub zip: u32,
    }
}

/// The record that crosses the exchange, first version.
#[derive(Clone, Debug, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, spate::Schema)]
struct Click {
    user: u64,
    page: u32,
}

/// The record with its page widened.
#[derive(Clone, Debug, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, spate::Schema)]
struct WideClick {
    user: u64,
    page: u64,
}

const USERS: u64 = 24;

fn config(mode: CheckpointMode) -> JobConfig {
    JobConfig {
        parallelism: 2,
        max_parallelism: 8,
        batch_size: 4,
        ring_capacity: 2,
        checkpoint: Some(CheckpointConfig {
            mode,
            timeout_ms: 60_000,
            ..CheckpointConfig::new("unused", 10)
        }),
        ..JobConfig::default()
    }
}

/// A job keyed by user whose state `sessions` of operator `track` holds `S`
/// made by `make` from the user and its click count; records are made by
/// `record` from their index.
fn job<R, S>(df: &Dataflow, record: fn(u64) -> R, user_of: fn(&R) -> u64, make: fn(u64, u64) -> S)
where
    R: spate::ExchangeData,
    S: spate::StateData,
{
    let data: Arc<Vec<u64>> = Arc::new((0..3_000).collect());
    df.source("numbers", VecSource::new(data), WatermarkStrategy::none())
        .map(record)
        .key_by(user_of)
        .process("track", move |state| {
            let sessions = state.value_state::<S>("sessions");
            let counts = state.value_state::<u64>("counts");
            move |_: R, ctx: &mut KeyedContext<u64, u64>| {
                let n = counts.update(
                    ctx,
                    || 0,
                    |c| {
                        *c += 1;
                        *c
                    },
                );
                sessions.set(ctx, make(*ctx.key(), n));
                ctx.emit(n);
                Ok(())
            }
        })
        .for_each(|_| {});
}

fn session(user: u64, n: u64) -> Session {
    Session {
        user: format!("user-{user}"),
        clicks: n,
        address: Address {
            city: "Oslo".into(),
            zip: 1000 + user as u32,
        },
    }
}

fn click(i: u64) -> Click {
    Click {
        user: i % USERS,
        page: (i % 7) as u32,
    }
}

/// The first run: checkpoints, crashes after two; the crash image.
fn first_run(mode: CheckpointMode) -> (SimIo, SimReport) {
    let io = SimIo::new();
    let report = Simulation::new(config(mode), 3)
        .storage(io.clone())
        .keep_buffers()
        .slow_subtask(1, 8)
        .crash_after_checkpoints(2)
        .run(|df| job(df, click, |c: &Click| c.user, session))
        .unwrap();
    (io.crash_image(), report)
}

/// The error of a restore that must fail (a short message when it does not:
/// a report's debug text is long).
fn refused(result: Result<SimReport, JobError>) -> JobError {
    match result {
        Ok(report) => panic!(
            "the restore from {:?} succeeded; it must be refused",
            report.restored_from
        ),
        Err(e) => e,
    }
}

fn restore<R, S>(
    image: SimIo,
    mode: CheckpointMode,
    record: fn(u64) -> R,
    user_of: fn(&R) -> u64,
    make: fn(u64, u64) -> S,
) -> Result<SimReport, JobError>
where
    R: spate::ExchangeData,
    S: spate::StateData,
{
    Simulation::new(config(mode), 4)
        .storage(image)
        .run(move |df| job(df, record, user_of, make))
}

#[test]
fn a_changed_state_type_fails_the_restore_naming_operator_state_and_field() {
    let (image, _) = first_run(CheckpointMode::Aligned);
    let e = refused(restore(
        image.clone(),
        CheckpointMode::Aligned,
        click,
        |c| c.user,
        |user, n| retyped::Session {
            user: format!("user-{user}"),
            clicks: n,
            address: retyped::Address {
                city: "Oslo".into(),
                zip: (1000 + user).to_string(),
            },
        },
    ));
    let text = e.to_string();
    match &e {
        JobError::Restore(RestoreError::IncompatibleState {
            operator,
            state,
            field,
            ..
        }) => {
            assert_eq!(operator, "track", "{text}");
            assert_eq!(state, "sessions", "{text}");
            assert_eq!(field, "value.address.zip", "{text}");
        }
        other => panic!("not an incompatible state: {other}"),
    }
    assert!(
        text.contains("`track`")
            && text.contains("`sessions`")
            && text.contains("value.address.zip"),
        "{text}"
    );
    assert!(
        text.contains("`u32`") && text.contains("`String`"),
        "{text}"
    );

    // An added optional field is named too (and refused: see
    // docs/checkpoints.md, "State evolution").
    let e = refused(restore(
        image.clone(),
        CheckpointMode::Aligned,
        click,
        |c| c.user,
        |user, n| extended::Session {
            user: format!("user-{user}"),
            clicks: n,
            address: extended::Address {
                city: "Oslo".into(),
                zip: 1000 + user as u32,
            },
            referrer: None,
        },
    ));
    assert!(
        matches!(&e, JobError::Restore(RestoreError::IncompatibleState { field, .. }) if field == "value.referrer"),
        "{e}"
    );

    // Renamed types with the same layout restore, and go on from the state.
    let report = restore(
        image,
        CheckpointMode::Aligned,
        click,
        |c| c.user,
        |user, n| renamed::Visit {
            user: format!("user-{user}"),
            clicks: n,
            address: renamed::Place {
                city: "Oslo".into(),
                zip: 1000 + user as u32,
            },
        },
    )
    .unwrap();
    assert!(report.restored_from.is_some());
}

#[test]
fn a_changed_record_type_in_flight_fails_the_restore_naming_the_input_and_field() {
    let (image, report) = first_run(CheckpointMode::Unaligned);
    let last = report
        .checkpoints
        .iter()
        .rfind(|c| c.status == spate::CheckpointStatus::Completed)
        .expect("a completed checkpoint");
    assert!(
        last.in_flight_bytes > 0,
        "the checkpoint holds in-flight records"
    );
    let e = refused(restore(
        image.clone(),
        CheckpointMode::Unaligned,
        |i| WideClick {
            user: i % USERS,
            page: i % 7,
        },
        |c| c.user,
        session,
    ));
    match &e {
        JobError::Restore(RestoreError::IncompatibleRecords {
            operator,
            input,
            field,
            ..
        }) => {
            assert_eq!((operator.as_str(), *input), ("track", 0), "{e}");
            assert_eq!(field, "record.page", "{e}");
        }
        other => panic!("not incompatible records: {other}"),
    }
    // The same types restore.
    let report = restore(image, CheckpointMode::Unaligned, click, |c| c.user, session).unwrap();
    assert!(report.restored_from.is_some());
}
