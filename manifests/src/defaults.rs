//! Every default of the manifest, and every limit on sources and values, in one place.
//! `docs/manifest.md` mirrors this file: change both in the same commit.
//!
//! Constants only: no parsing, no I/O.

use crate::signal::Signal;
use crate::units::{ByteSize, Cpu, Duration};

// ---- defaults: what an omitted field means --------------------------------------------------

/// `resources.cpu`: one core. Autoscaling on `cpu` measures against this.
pub const CPU: Cpu = Cpu::from_millis(1000);
/// `resources.memory`: 256Mi, so one app cannot take the host's memory by accident.
pub const MEMORY: ByteSize = ByteSize::mib(256);
/// `resources.pids`: enough for a web server with threads, stops a fork bomb.
pub const PIDS: u32 = 1024;

/// `replicas` when neither `replicas` nor `autoscale` is given.
pub const REPLICAS: u32 = 1;

/// `autoscale.min`.
pub const AUTOSCALE_MIN: u32 = 1;
/// `autoscale.metric`.
pub const AUTOSCALE_METRIC: crate::app::Metric = crate::app::Metric::Cpu;
/// `autoscale.target` when the metric is `cpu`: percent of `resources.cpu`. `rps` and
/// `concurrency` have no default target: they must be written.
pub const AUTOSCALE_CPU_TARGET: u32 = 60;
/// `autoscale.scale_up_window`: scale up at once.
pub const SCALE_UP_WINDOW: Duration = Duration::ZERO;
/// `autoscale.scale_down_window`: the highest recommendation of the last minute wins.
pub const SCALE_DOWN_WINDOW: Duration = Duration::from_secs(60);

/// `health.interval`.
pub const HEALTH_INTERVAL: Duration = Duration::from_secs(10);
/// `health.timeout`.
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(1);
/// `health.failures`: consecutive failures before an instance is unhealthy.
pub const HEALTH_FAILURES: u32 = 3;
/// `health.start_period`: failures during this time after start do not count.
pub const HEALTH_START_PERIOD: Duration = Duration::ZERO;

/// `update.max_surge`: extra instances during a rollout.
pub const MAX_SURGE: u32 = 1;
/// `update.max_unavailable`: instances below the desired count during a rollout.
pub const MAX_UNAVAILABLE: u32 = 0;
/// `update.deadline`: a new revision not healthy by then is rolled back.
pub const UPDATE_DEADLINE: Duration = Duration::from_secs(60);
/// `update.auto_rollback`.
pub const AUTO_ROLLBACK: bool = true;

/// `stop.signal`.
pub const STOP_SIGNAL: Signal = Signal::TERM;
/// `stop.grace`: time between the stop signal and SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// `restart.policy`.
pub const RESTART_POLICY: crate::app::RestartPolicy = crate::app::RestartPolicy::Always;
/// `restart.backoff_max`: the longest wait between restarts of a crashing instance.
pub const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(300);

/// `volumes[].read_only`.
pub const VOLUME_READ_ONLY: bool = false;

/// `placement.spread`: replicas go to different hosts when there are enough.
pub const PLACEMENT_SPREAD: bool = true;

/// `expose.protocol`.
pub const EXPOSE_PROTOCOL: crate::app::Protocol = crate::app::Protocol::Http;

/// `network`.
pub const NETWORK: crate::app::NetworkMode = crate::app::NetworkMode::Private;

/// `logs.max_size`: one log file is rotated at this size.
pub const LOGS_MAX_SIZE: ByteSize = ByteSize::mib(10);
/// `logs.max_files`: rotated files kept.
pub const LOGS_MAX_FILES: u32 = 5;

// ---- limits on sources: what the parser accepts at all --------------------------------------

/// Largest manifest file, in bytes. Kubernetes caps an object at 1.5 MiB; a manifest tree is
/// read whole into memory, so each file stays small.
pub const MAX_FILE_BYTES: usize = 1 << 20;
/// Most YAML documents (apps) in one file.
pub const MAX_DOCUMENTS: usize = 256;
/// Deepest nesting of mappings and sequences. A manifest needs 4.
pub const MAX_DEPTH: usize = 32;
/// Most YAML nodes in one file, aliases expanded.
pub const MAX_NODES: usize = 100_000;
/// Most events replayed from aliases in one file (billion-laughs guard).
pub const MAX_ALIAS_REPLAYED_EVENTS: usize = 10_000;
/// Most alias uses in one file.
pub const MAX_ALIASES: usize = 1_000;

// ---- limits on values: what is sane for one app ---------------------------------------------

/// Longest app or volume name (a DNS label).
pub const MAX_NAME_LEN: usize = 63;
/// Smallest `resources.cpu`: 10 millicores.
pub const MIN_CPU: Cpu = Cpu::from_millis(10);
/// Largest `resources.cpu`: 1024 cores.
pub const MAX_CPU: Cpu = Cpu::from_millis(1_024_000);
/// Smallest `resources.memory`: 6Mi (Docker's minimum; less cannot start a runtime).
pub const MIN_MEMORY: ByteSize = ByteSize::mib(6);
/// Largest `resources.memory`: 4Ti.
pub const MAX_MEMORY: ByteSize = ByteSize::mib(4 << 20);
/// Largest `resources.pids` (the kernel's `pid_max` ceiling).
pub const MAX_PIDS: u32 = 4_194_304;
/// Largest `replicas` and `autoscale.max`.
pub const MAX_REPLICAS: u32 = 1000;
/// Shortest probe interval.
pub const MIN_HEALTH_INTERVAL: Duration = Duration::from_millis(100);
/// Longest any duration field may be (a day).
pub const MAX_DURATION: Duration = Duration::from_secs(86_400);
/// Most `health.failures`.
pub const MAX_HEALTH_FAILURES: u32 = 100;
/// Longest `health.http` path.
pub const MAX_HTTP_PATH_LEN: usize = 1024;
/// Smallest `logs.max_size`.
pub const MIN_LOG_SIZE: ByteSize = ByteSize::from_bytes(4096);
/// Largest `logs.max_size`.
pub const MAX_LOG_SIZE: ByteSize = ByteSize::mib(1024);
/// Most `logs.max_files`.
pub const MAX_LOG_FILES: u32 = 100;
/// Most entries in `env`, `placement.labels`, `volumes`, `command`, `health.exec`.
pub const MAX_ENTRIES: usize = 1024;
/// Longest single string value (env value, command argument).
pub const MAX_STRING_LEN: usize = 32 * 1024;
/// Largest `autoscale.target`.
pub const MAX_AUTOSCALE_TARGET: u32 = 1_000_000;
