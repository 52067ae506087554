//! Building a keyed operator into a subtask's graph: its inputs (one or
//! two, each behind an exchange), its output, and its place among the
//! subtask's timer operators.

use super::operator::{Operator, StepBudget, ARCHIVE_STEP_BUDGET, KEY_GROUPS_PER_STEP};
use super::*;
use crate::dataflow::Dataflow;

type Shared<K, I1, I2, O, F> = Rc<RefCell<Operator<K, I1, I2, O, F>>>;

struct Input1<K, I1, I2, O, F>(Shared<K, I1, I2, O, F>);
struct Input2<K, I1, I2, O, F>(Shared<K, I1, I2, O, F>);

impl<K: Key, I1, I2, O: Data, F: CoProcessFunction<K, I1, I2, O>> Push<I1>
    for Input1<K, I1, I2, O, F>
{
    fn push(&mut self, batch: &mut Vec<Record<I1>>, cx: &mut Cx) -> Result<(), JobError> {
        self.0.borrow_mut().process(
            batch,
            cx,
            |op, v| (op.key1)(v),
            |f, v, ctx| f.process_element1(v, ctx),
        )
    }
    fn watermark(&mut self, watermark: Timestamp, cx: &mut Cx) -> Result<(), JobError> {
        self.0.borrow_mut().input_watermark(0, watermark, cx)
    }
    fn end(&mut self, cx: &mut Cx) -> Result<(), JobError> {
        self.0.borrow_mut().input_end(0, cx)
    }
    fn barrier(&mut self, barrier: Barrier, cx: &mut Cx) -> Result<(), JobError> {
        self.0.borrow_mut().input_barrier(0, barrier, cx)
    }
}

impl<K: Key, I1, I2, O: Data, F: CoProcessFunction<K, I1, I2, O>> Push<I2>
    for Input2<K, I1, I2, O, F>
{
    fn push(&mut self, batch: &mut Vec<Record<I2>>, cx: &mut Cx) -> Result<(), JobError> {
        self.0.borrow_mut().process(
            batch,
            cx,
            |op, v| (op.key2.as_ref().expect("second input is keyed"))(v),
            |f, v, ctx| f.process_element2(v, ctx),
        )
    }
    fn watermark(&mut self, watermark: Timestamp, cx: &mut Cx) -> Result<(), JobError> {
        self.0.borrow_mut().input_watermark(1, watermark, cx)
    }
    fn end(&mut self, cx: &mut Cx) -> Result<(), JobError> {
        self.0.borrow_mut().input_end(1, cx)
    }
    fn barrier(&mut self, barrier: Barrier, cx: &mut Cx) -> Result<(), JobError> {
        self.0.borrow_mut().input_barrier(1, barrier, cx)
    }
}

impl<K: Key, I1: 'static, I2: 'static, O: Data, F: CoProcessFunction<K, I1, I2, O>> StatefulOperator
    for RefCell<Operator<K, I1, I2, O, F>>
{
    fn fire_processing_timers(&self, cx: &mut Cx) -> Result<bool, JobError> {
        let mut op = self.borrow_mut();
        let mut fired = false;
        loop {
            let (range, max_parallelism) = (op.range, op.max_parallelism);
            let group_of = |key: &K| (key_group_for(key, max_parallelism) - range.start) as usize;
            let Some((ts, key, group)) = op.timers.pop_due(1, cx.now_ms, group_of) else {
                break;
            };
            op.fire(ts, TimeDomain::ProcessingTime, key, group, cx)?;
            fired = true;
        }
        if fired {
            op.publish_metrics(cx.now_ms);
            op.emit_out(cx)?;
        }
        Ok(fired)
    }

    fn next_processing_timer(&self) -> Option<u64> {
        self.borrow().timers.next_processing()
    }

    fn checkpoint_complete(&self, id: u64) {
        for table in self.borrow().state.tables() {
            table.borrow_mut().checkpoint_complete(id);
        }
    }

    fn checkpoint_aborted(&self, id: u64) {
        let mut op = self.borrow_mut();
        if op.lazy.as_ref().is_some_and(|l| l.id == id) {
            op.lazy = None;
        }
        for table in op.state.tables() {
            table.borrow_mut().checkpoint_aborted(id);
        }
    }

    fn snapshot_if_finished(&self, barrier: Barrier, cx: &mut Cx) -> Result<(), JobError> {
        let mut op = self.borrow_mut();
        if op.open_inputs == 0 && barrier.id > op.snapshotted {
            op.cut(barrier.id)?;
        }
        let _ = cx;
        Ok(())
    }

    fn continue_snapshot(&self) -> Result<bool, JobError> {
        let mut op = self.borrow_mut();
        let mut progressed = false;
        // Restored key groups load in the background, a few per step; a
        // load that failed on access is reported here too.
        let mut budget = KEY_GROUPS_PER_STEP;
        for table in op.state.tables() {
            let loaded = table.borrow_mut().load_pending(budget).map_err(|reason| {
                crate::RestoreError::Damaged {
                    what: format!("operator `{}`", op.name),
                    reason: reason.to_string(),
                }
            })?;
            budget -= loaded;
            progressed |= loaded > 0;
        }
        if op.lazy.is_none() {
            return Ok(op.continue_background_bases()? || progressed);
        }
        let budget = op.budget;
        Ok(op.continue_snapshot(budget)? || progressed)
    }

    fn has_background_work(&self) -> bool {
        self.borrow()
            .state
            .tables()
            .iter()
            .any(|t| t.borrow().requested_bases() > 0)
    }

    fn has_snapshot_work(&self) -> bool {
        let op = self.borrow();
        op.lazy.is_some() || op.state.tables().iter().any(|t| t.borrow().loads_ready())
    }
}

#[allow(clippy::type_complexity)]
pub(super) fn build<
    K: Key,
    I1: ExchangeData,
    I2: ExchangeData,
    O: Data,
    F: CoProcessFunction<K, I1, I2, O>,
>(
    first: &KeyedStream<K, I1>,
    second: Option<&KeyedStream<K, I2>>,
    name: &str,
    factory: impl FnOnce(&mut StateRegistry<K>) -> F,
) -> Stream<O> {
    let df = &first.stream.df;
    df.claim_name(name);
    let (range, max_parallelism, subtask) = {
        let g = df.graph();
        (g.range, g.max_parallelism, g.subtask)
    };
    let StateSettings {
        incremental,
        track_changes,
        changed_bytes,
        budget,
    } = StateSettings::of(df);
    let mut registry = StateRegistry::new(range, track_changes, changed_bytes);
    let function = factory(&mut registry);
    sign(df, name, &registry);
    let names = (
        Arc::<str>::from(name),
        registry
            .tables()
            .iter()
            .map(|t| Arc::<str>::from(t.borrow().name()))
            .collect(),
    );
    let output = Output::new();
    let op = Rc::new(RefCell::new(Operator {
        name: name.to_string(),
        subtask,
        function,
        key1: first.key.clone(),
        key2: second.map(|s| s.key.clone()),
        range,
        max_parallelism,
        timers: Timers::new(range.len()),
        out: Vec::new(),
        output: output.clone(),
        watermarks: [0, if second.is_some() { 0 } else { MAX_WATERMARK }],
        watermark: 0,
        open_inputs: if second.is_some() { 2 } else { 1 },
        ended: [false, second.is_none()],
        state: registry,
        checkpoints: df.checkpoints(),
        barriers: [None, None],
        snapshotted: 0,
        incremental,
        lazy: None,
        background_pause_us: 0,
        budget,
        names,
        timers_schema: Arc::new(BlockSchema::timers::<K>()),
        metrics: df.operator_metrics(name, crate::metrics::OperatorKind::Keyed),
        next_state_sample_ms: 0,
        values_kept_published: 0,
    }));
    if let Some(restore) = df.restore_state() {
        let restored = op.borrow_mut().restore(&restore);
        if let Err(e) = restored {
            df.fail_build(e);
        }
    }
    connect(df, name, first, second, op, output)
}

/// Puts the operator behind the exchanges of its inputs and among the
/// subtask's timer operators; returns its output stream.
fn connect<K: Key, I1: ExchangeData, I2: ExchangeData, O: Data, F>(
    df: &Dataflow,
    name: &str,
    first: &KeyedStream<K, I1>,
    second: Option<&KeyedStream<K, I2>>,
    op: Shared<K, I1, I2, O, F>,
    output: Output<O>,
) -> Stream<O>
where
    F: CoProcessFunction<K, I1, I2, O>,
{
    let (in1, chain1) = exchange::exchange(
        df,
        &first.stream.output,
        &first.stream.chains,
        first.key.clone(),
        (name, 0),
    );
    in1.attach(Box::new(Input1(op.clone())));
    let mut chains = vec![chain1];
    if let Some(second) = second {
        let (in2, chain2) = exchange::exchange(
            df,
            &second.stream.output,
            &second.stream.chains,
            second.key.clone(),
            (name, 1),
        );
        in2.attach(Box::new(Input2(op.clone())));
        df.link_inputs(chain1, chain2);
        chains.push(chain2);
    }
    df.graph().stateful_operators.push(op);
    Stream {
        df: df.clone(),
        output,
        chains: Rc::new(chains),
    }
}

pub(crate) fn build_single<K: Key, T: ExchangeData, O: Data, P: KeyedProcessFunction<K, T, O>>(
    keyed: &KeyedStream<K, T>,
    name: &str,
    factory: impl FnOnce(&mut StateRegistry<K>) -> P,
) -> Stream<O> {
    build::<K, T, (), O, _>(keyed, None, name, |registry| Single(factory(registry)))
}

pub(crate) fn build_connected<
    K: Key,
    T1: ExchangeData,
    T2: ExchangeData,
    O: Data,
    P: CoProcessFunction<K, T1, T2, O>,
>(
    connected: &ConnectedStreams<K, T1, T2>,
    name: &str,
    factory: impl FnOnce(&mut StateRegistry<K>) -> P,
) -> Stream<O> {
    build(&connected.first, Some(&connected.second), name, factory)
}

/// What a keyed operator's state tables need from the job's checkpoint
/// configuration.
struct StateSettings {
    /// Bounds of incremental chains; `None` for full checkpoints.
    incremental: Option<IncrementalBounds>,
    /// Whether tables track changed keys (incremental checkpoints, or a
    /// trigger by change volume).
    track_changes: bool,
    /// The subtask's counter of changed bytes, for a trigger by change volume.
    changed_bytes: Option<std::sync::Arc<std::sync::atomic::AtomicU64>>,
    /// How much background archiving a step may do.
    budget: StepBudget,
}

impl StateSettings {
    fn of(df: &Dataflow) -> Self {
        let g = df.graph();
        let checkpoint = g.env.config.checkpoint.as_ref();
        let incremental = checkpoint
            .filter(|c| c.incremental)
            .map(|c| IncrementalBounds {
                max_delta_chain: c.max_delta_chain.max(1),
                max_delta_ratio: c.max_delta_ratio,
            });
        let volume = checkpoint.is_some_and(|c| c.trigger_after_changed_bytes.is_some());
        let budget = match g
            .env
            .archive_groups_per_step
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            0 => StepBudget::Time(ARCHIVE_STEP_BUDGET),
            rounds => StepBudget::Rounds(rounds),
        };
        Self {
            incremental,
            track_changes: incremental.is_some() || volume,
            changed_bytes: volume
                .then(|| g.env.coordinator.changed_bytes[g.env.local_index(g.subtask)].clone()),
            budget,
        }
    }
}

/// Adds the operator's name and its states' names to the job's fingerprint.
/// Their types are not in it: a restore compares them field by field with
/// the schemas the checkpoint recorded (an error naming the state and the
/// field), and the names of Rust types are not stable across compilers.
fn sign<K: Key>(df: &Dataflow, name: &str, registry: &StateRegistry<K>) {
    df.sign(format!(
        "keyed {name} [{}]",
        registry
            .tables()
            .iter()
            .map(|t| t.borrow().name().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    ));
}
