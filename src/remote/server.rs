//! `vla-rt serve`: one checkpoint answering inference requests from many robots on
//! `vla/policy/<name>/infer`, in batches (ARCHITECTURE.md §16).
//!
//! The Zenoh callback only decodes the header, decides whether this server is the one that
//! answers the robot, and queues the request; a full queue is refused at once with `busy`.
//! One worker thread takes the oldest request, waits up to the batch window (never past the
//! earliest deadline of the batch) for more, drops the ones whose budget has run out, and
//! runs the rest as one batch.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam::channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use sha2::Digest as _;
use zenoh::liveliness::LivelinessToken;
use zenoh::query::{Query, Queryable};
use zenoh::sample::SampleKind;
use zenoh::{Session, Wait};

use super::wire::{
    FrameEncoding, InstructionField, ReplyParts, ReplyStatus, Request, ServerTimings,
    INSTRUCTION_HASH_LEN, MAX_REPLY_ROWS,
};
use super::{infer_key, server_token_key, servers_selector, ServeConfig};
use crate::model::action::{resolve_unnorm_key, ActionDecoder};
use crate::model::config::OpenVlaConfig;
use crate::policy::{BatchRequest, Policy, Prediction};
use crate::preprocess::RgbImage;

/// What the server answers with besides the policy: the checkpoint's identity and the
/// decoders of its dataset statistics, so that each request may name its own.
pub struct ServedCheckpoint {
    /// `sha256:<hex>` of the checkpoint folder.
    pub fingerprint: String,
    /// The key requests without one are un-normalised with.
    pub default_unnorm_key: String,
    /// The token path's decoders, one per dataset; none for an OpenVLA-OFT checkpoint, whose
    /// policy un-normalises its chunks itself, with the default key only.
    decoders: BTreeMap<String, ActionDecoder>,
}

impl ServedCheckpoint {
    /// Reads `config.json` of `model_dir` for its dataset statistics; `unnorm_key` is the
    /// default (unset: the only one).
    pub fn load(model_dir: &std::path::Path, unnorm_key: Option<&str>) -> Result<Self, String> {
        let fingerprint = crate::model::fingerprint::checkpoint_fingerprint(model_dir)
            .map_err(|e| e.to_string())?;
        Self::with_fingerprint(model_dir, unnorm_key, fingerprint)
    }

    /// [`ServedCheckpoint::load`] for weights that are not the folder's own (a model built in
    /// memory from the folder's config, as the benchmarks do): the fingerprint is given.
    pub fn with_fingerprint(
        model_dir: &std::path::Path,
        unnorm_key: Option<&str>,
        fingerprint: String,
    ) -> Result<Self, String> {
        let config =
            OpenVlaConfig::from_file(&model_dir.join("config.json")).map_err(|e| e.to_string())?;
        let oft_stats = crate::backend::oft::statistics_if_oft(model_dir, &config.norm_stats)
            .map_err(|e| e.to_string())?;
        if let Some(stats) = oft_stats {
            let default_unnorm_key =
                resolve_unnorm_key(&stats, unnorm_key).map_err(|e| e.to_string())?;
            return Ok(Self {
                fingerprint,
                default_unnorm_key,
                decoders: BTreeMap::new(),
            });
        }
        let default_unnorm_key =
            resolve_unnorm_key(&config.norm_stats, unnorm_key).map_err(|e| e.to_string())?;
        let decoders = config
            .norm_stats
            .iter()
            .map(|(key, stats)| {
                (
                    key.clone(),
                    ActionDecoder::new(
                        config.text_vocab_size(),
                        config.n_action_bins,
                        &stats.action,
                    ),
                )
            })
            .collect();
        Ok(Self {
            fingerprint,
            default_unnorm_key,
            decoders,
        })
    }

    /// Whether a request may ask for the statistics `key`.
    fn serves(&self, key: &str) -> bool {
        match self.decoders.is_empty() {
            true => key == self.default_unnorm_key,
            false => self.decoders.contains_key(key),
        }
    }

    /// The statistics keys requests may ask for, for messages.
    fn keys(&self) -> String {
        match self.decoders.is_empty() {
            true => self.default_unnorm_key.clone(),
            false => self.decoders.keys().cloned().collect::<Vec<_>>().join(", "),
        }
    }
}

/// Counters of a running server.
#[derive(Debug, Default)]
pub struct ServerStats {
    /// Requests this server is responsible for, queued or refused.
    pub received: AtomicU64,
    /// Requests for another server of the same name (ignored here).
    pub routed_elsewhere: AtomicU64,
    pub answered: AtomicU64,
    pub busy: AtomicU64,
    pub expired: AtomicU64,
    pub bad_requests: AtomicU64,
    pub failed: AtomicU64,
    pub batches: AtomicU64,
    /// Requests computed in batches (`batched / batches` is the mean batch size).
    pub batched: AtomicU64,
}

struct Pending {
    query: Query,
    request_id: u64,
    payload: Vec<u8>,
    received: Instant,
    deadline: Instant,
}

/// The servers of this name that are alive (their liveliness tokens), this one included.
struct Membership {
    own_id: String,
    live: Mutex<BTreeSet<String>>,
}

impl Membership {
    /// Whether this server answers `robot_id`: the live server with the highest
    /// rendezvous score `sha256(robot_id NUL server_id)` does, so each robot keeps one server
    /// while it lives and moves to the next-highest when it goes.
    fn answers(&self, robot_id: &str) -> bool {
        let score = |server: &str| {
            let mut hasher = sha2::Sha256::new();
            hasher.update(robot_id.as_bytes());
            hasher.update([0u8]);
            hasher.update(server.as_bytes());
            let digest = hasher.finalize();
            let mut head = [0u8; 8];
            head.copy_from_slice(&digest[..8]);
            u64::from_be_bytes(head)
        };
        let own = score(&self.own_id);
        let live = match self.live.lock() {
            Ok(live) => live,
            Err(poisoned) => poisoned.into_inner(),
        };
        live.iter()
            .filter(|id| **id != self.own_id)
            .all(|other| (score(other), other.as_str()) < (own, self.own_id.as_str()))
    }
}

/// A running `serve`: the queryable, the liveliness token and the batching worker.
pub struct Server {
    stop: Arc<AtomicBool>,
    worker: Option<JoinHandle<()>>,
    stats: Arc<ServerStats>,
    queryable: Option<Queryable<()>>,
    token: Option<LivelinessToken>,
    membership_watch: Option<zenoh::pubsub::Subscriber<()>>,
    key: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("zenoh: declaring {what} on {key}: {message}")]
    Declare {
        what: &'static str,
        key: String,
        message: String,
    },
    #[error("cannot start the serving thread: {0}")]
    Thread(String),
}

impl Server {
    /// Declares the queryable and the liveliness token on `session` and starts the worker.
    pub fn start(
        session: &Session,
        policy: Box<dyn Policy>,
        checkpoint: ServedCheckpoint,
        settings: &ServeConfig,
        name: &str,
    ) -> Result<Self, ServeError> {
        let key = infer_key(name);
        let own_id = session.zid().to_string();
        let membership = Arc::new(Membership {
            own_id: own_id.clone(),
            live: Mutex::new(BTreeSet::from([own_id.clone()])),
        });
        let declare_error = |what: &'static str, key: &str, e: zenoh::Error| ServeError::Declare {
            what,
            key: key.to_string(),
            message: crate::transport::zenoh_error_text(&*e),
        };
        let watched = Arc::clone(&membership);
        let prefix = server_token_key(name, "");
        let membership_watch = session
            .liveliness()
            .declare_subscriber(servers_selector(name))
            .history(true)
            .callback(move |sample| {
                let Some(id) = sample.key_expr().as_str().strip_prefix(&prefix) else {
                    return;
                };
                let mut live = match watched.live.lock() {
                    Ok(live) => live,
                    Err(poisoned) => poisoned.into_inner(),
                };
                match sample.kind() {
                    SampleKind::Put => {
                        if live.insert(id.to_string()) {
                            log::info!("serve: server {id} is up ({} live)", live.len());
                        }
                    }
                    SampleKind::Delete => {
                        // This server never leaves its own set.
                        if id != watched.own_id && live.remove(id) {
                            log::warn!(
                                "serve: server {id} is gone; its robots come here if they \
                                 rank this server next ({} live)",
                                live.len()
                            );
                        }
                    }
                }
            })
            .wait()
            .map_err(|e| declare_error("the server watch", &servers_selector(name), e))?;

        let stats = Arc::new(ServerStats::default());
        let (sender, receiver) = crossbeam::channel::bounded::<Pending>(settings.queue);
        let reply_context = Arc::new(ReplyContext {
            fingerprint: checkpoint.fingerprint.clone(),
            server_id: own_id.clone(),
        });
        let queryable = {
            let stats = Arc::clone(&stats);
            let reply_context = Arc::clone(&reply_context);
            let membership = Arc::clone(&membership);
            let sender: Sender<Pending> = sender;
            session
                .declare_queryable(&key)
                .complete(true)
                .callback(move |query| {
                    admit(query, &sender, &membership, &stats, &reply_context);
                })
                .wait()
                .map_err(|e| declare_error("the queryable", &key, e))?
        };
        let token = session
            .liveliness()
            .declare_token(server_token_key(name, &own_id))
            .wait()
            .map_err(|e| {
                declare_error("the liveliness token", &server_token_key(name, &own_id), e)
            })?;

        let stop = Arc::new(AtomicBool::new(false));
        let worker = {
            let stop = Arc::clone(&stop);
            let stats = Arc::clone(&stats);
            let settings = settings.clone();
            std::thread::Builder::new()
                .name("vla-serve".into())
                .spawn(move || {
                    let mut worker = BatchWorker {
                        policy,
                        checkpoint,
                        settings,
                        stats,
                        reply: reply_context,
                        instructions: InstructionCache::default(),
                        out: Vec::new(),
                    };
                    worker.run(&receiver, &stop);
                })
                .map_err(|e| ServeError::Thread(e.to_string()))?
        };
        log::info!(
            "serve: answering on {key} as server {own_id} (batch window {} ms, at most {} \
             per batch, queue {})",
            settings.batch_window_ms,
            settings.max_batch,
            settings.queue
        );
        Ok(Self {
            stop,
            worker: Some(worker),
            stats,
            queryable: Some(queryable),
            token: Some(token),
            membership_watch: Some(membership_watch),
            key,
        })
    }

    pub fn stats(&self) -> &ServerStats {
        &self.stats
    }

    /// The key this server answers on.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Undeclares (the token first, so the other servers take its robots over at once) and
    /// ends the worker after its current batch.
    pub fn stop(&mut self) {
        if let Some(token) = self.token.take() {
            let _ = token.undeclare().wait();
        }
        if let Some(queryable) = self.queryable.take() {
            let _ = queryable.undeclare().wait();
        }
        if let Some(watch) = self.membership_watch.take() {
            let _ = watch.undeclare().wait();
        }
        self.stop.store(true, Ordering::Release);
        if let Some(worker) = self.worker.take() {
            if worker.join().is_err() {
                log::error!("serve: the serving thread panicked");
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

struct ReplyContext {
    fingerprint: String,
    server_id: String,
}

impl ReplyContext {
    fn send(&self, query: &Query, parts: ReplyParts<'_>, out: &mut Vec<u8>) {
        let parts = ReplyParts {
            fingerprint: &self.fingerprint,
            server_id: &self.server_id,
            ..parts
        };
        if let Err(e) = parts.encode(out) {
            log::error!("serve: reply not encodable: {e}");
            return;
        }
        if let Err(e) = query.reply(query.key_expr().clone(), out.as_slice()).wait() {
            log::debug!(
                "serve: reply to {}: {}",
                query.key_expr(),
                crate::transport::zenoh_error_text(&*e)
            );
        }
    }

    /// A reply without actions.
    fn refuse(&self, query: &Query, status: ReplyStatus, request_id: u64, message: &str) {
        let mut out = Vec::new();
        self.send(
            query,
            ReplyParts {
                status,
                request_id,
                capture_time_ns: 0,
                timings: ServerTimings::default(),
                fingerprint: "",
                server_id: "",
                actions: &[],
                action_dim: 0,
                tokens: &[],
                message,
            },
            &mut out,
        );
    }
}

/// The Zenoh callback: decode the header, route, queue or refuse. Never blocks.
fn admit(
    query: Query,
    queue: &Sender<Pending>,
    membership: &Membership,
    stats: &ServerStats,
    reply: &ReplyContext,
) {
    let received = Instant::now();
    let payload = query
        .payload()
        .map(|bytes| bytes.to_bytes().into_owned())
        .unwrap_or_default();
    let (request_id, budget_us) = match Request::decode(&payload) {
        Ok(request) => {
            if !membership.answers(request.robot_id) {
                stats.routed_elsewhere.fetch_add(1, Ordering::Relaxed);
                return;
            }
            (request.request_id, request.budget_us)
        }
        Err(e) => {
            stats.bad_requests.fetch_add(1, Ordering::Relaxed);
            let request_id = payload
                .get(8..16)
                .and_then(|b| b.try_into().ok())
                .map_or(0, u64::from_le_bytes);
            reply.refuse(&query, ReplyStatus::BadRequest, request_id, &e.to_string());
            return;
        }
    };
    stats.received.fetch_add(1, Ordering::Relaxed);
    let pending = Pending {
        query,
        request_id,
        payload,
        received,
        deadline: received + Duration::from_micros(u64::from(budget_us)),
    };
    match queue.try_send(pending) {
        Ok(()) => {}
        Err(TrySendError::Full(pending)) => {
            stats.busy.fetch_add(1, Ordering::Relaxed);
            reply.refuse(
                &pending.query,
                ReplyStatus::Busy,
                request_id,
                &format!("queue full ({} waiting)", queue.len()),
            );
        }
        Err(TrySendError::Disconnected(pending)) => {
            reply.refuse(
                &pending.query,
                ReplyStatus::Busy,
                request_id,
                "the server is stopping",
            );
        }
    }
}

/// Instructions seen in full, by hash, newest kept (a robot sends the hash once a text was
/// answered).
#[derive(Default)]
struct InstructionCache {
    texts: HashMap<[u8; INSTRUCTION_HASH_LEN], String>,
    order: VecDeque<[u8; INSTRUCTION_HASH_LEN]>,
}

/// Instructions a server remembers by hash.
const INSTRUCTION_CACHE_ENTRIES: usize = 256;

impl InstructionCache {
    fn remember(&mut self, text: &str) {
        let hash = super::wire::instruction_hash(text);
        if self.texts.insert(hash, text.to_string()).is_none() {
            self.order.push_back(hash);
            if self.order.len() > INSTRUCTION_CACHE_ENTRIES {
                if let Some(oldest) = self.order.pop_front() {
                    self.texts.remove(&oldest);
                }
            }
        }
    }

    fn get(&self, hash: &[u8; INSTRUCTION_HASH_LEN]) -> Option<&str> {
        self.texts.get(hash).map(String::as_str)
    }
}

struct BatchWorker {
    policy: Box<dyn Policy>,
    checkpoint: ServedCheckpoint,
    settings: ServeConfig,
    stats: Arc<ServerStats>,
    reply: Arc<ReplyContext>,
    instructions: InstructionCache,
    out: Vec<u8>,
}

/// A queued request made ready for the policy.
struct Prepared {
    pending: Pending,
    capture_time_ns: u64,
    image: RgbImage,
    instruction: String,
    unnorm_key: String,
}

impl BatchWorker {
    fn run(&mut self, queue: &Receiver<Pending>, stop: &AtomicBool) {
        let window = Duration::from_secs_f64(self.settings.batch_window_ms / 1000.0);
        while !stop.load(Ordering::Acquire) {
            let first = match queue.recv_timeout(Duration::from_millis(50)) {
                Ok(first) => first,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let mut close = (first.received + window).min(first.deadline);
            let mut batch = vec![first];
            while batch.len() < self.settings.max_batch {
                match queue.recv_deadline(close) {
                    Ok(next) => {
                        close = close.min(next.deadline);
                        batch.push(next);
                    }
                    Err(_) => break,
                }
            }
            self.run_batch(batch);
        }
        // Whatever is left is refused, not left to time out.
        while let Ok(pending) = queue.try_recv() {
            self.refuse(pending, ReplyStatus::Busy, "the server is stopping".into());
        }
    }

    fn refuse(&mut self, pending: Pending, status: ReplyStatus, message: String) {
        match status {
            ReplyStatus::Expired => self.stats.expired.fetch_add(1, Ordering::Relaxed),
            ReplyStatus::Busy => self.stats.busy.fetch_add(1, Ordering::Relaxed),
            ReplyStatus::BadRequest | ReplyStatus::UnknownInstruction => {
                self.stats.bad_requests.fetch_add(1, Ordering::Relaxed)
            }
            _ => self.stats.failed.fetch_add(1, Ordering::Relaxed),
        };
        self.reply
            .refuse(&pending.query, status, pending.request_id, &message);
    }

    fn run_batch(&mut self, batch: Vec<Pending>) {
        let start = Instant::now();
        let mut ready = Vec::with_capacity(batch.len());
        for pending in batch {
            if start >= pending.deadline {
                let late_ms = start.duration_since(pending.received).as_secs_f64() * 1e3;
                self.refuse(
                    pending,
                    ReplyStatus::Expired,
                    format!("budget spent after {late_ms:.1} ms in the queue"),
                );
                continue;
            }
            match self.prepare(&pending.payload) {
                Ok((capture_time_ns, image, instruction, unnorm_key)) => ready.push(Prepared {
                    pending,
                    capture_time_ns,
                    image,
                    instruction,
                    unnorm_key,
                }),
                Err((status, message)) => self.refuse(pending, status, message),
            }
        }
        if ready.is_empty() {
            return;
        }
        let requests: Vec<BatchRequest<'_>> = ready
            .iter()
            .map(|p| BatchRequest {
                image: &p.image,
                instruction: &p.instruction,
            })
            .collect();
        let compute_start = Instant::now();
        let results = self.policy.predict_batch(&requests);
        let compute_us = micros(compute_start.elapsed());
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        self.stats
            .batched
            .fetch_add(ready.len() as u64, Ordering::Relaxed);
        let batch_size = ready.len().min(u16::MAX as usize) as u16;
        for (prepared, result) in ready.into_iter().zip(results) {
            let timings = ServerTimings {
                queue_us: micros(compute_start.duration_since(prepared.pending.received)),
                compute_us,
                batch_size,
            };
            match result {
                Ok(prediction) => self.answer(&prepared, &prediction, timings),
                Err(e) => self.refuse(prepared.pending, ReplyStatus::PolicyError, e.to_string()),
            }
        }
    }

    /// Decodes the frame and resolves the instruction and the statistics key.
    #[allow(clippy::type_complexity)]
    fn prepare(
        &mut self,
        payload: &[u8],
    ) -> Result<(u64, RgbImage, String, String), (ReplyStatus, String)> {
        let request =
            Request::decode(payload).map_err(|e| (ReplyStatus::BadRequest, e.to_string()))?;
        let instruction = match request.instruction {
            InstructionField::Text(text) => {
                self.instructions.remember(text);
                text.to_string()
            }
            InstructionField::Hash(hash) => match self.instructions.get(&hash) {
                Some(text) => text.to_string(),
                None => {
                    return Err((
                        ReplyStatus::UnknownInstruction,
                        "instruction hash not seen by this server: send the text".into(),
                    ))
                }
            },
        };
        let unnorm_key = if request.unnorm_key.is_empty() {
            self.checkpoint.default_unnorm_key.clone()
        } else if self.checkpoint.serves(request.unnorm_key) {
            request.unnorm_key.to_string()
        } else {
            return Err((
                ReplyStatus::BadRequest,
                format!(
                    "field unnorm_key: `{}` is not in the checkpoint's statistics served ({})",
                    request.unnorm_key,
                    self.checkpoint.keys()
                ),
            ));
        };
        let image = decode_frame(&request).map_err(|m| (ReplyStatus::BadRequest, m))?;
        Ok((request.capture_time_ns, image, instruction, unnorm_key))
    }

    fn answer(&mut self, prepared: &Prepared, prediction: &Prediction, timings: ServerTimings) {
        // Token-path predictions are un-normalised with the request's own statistics; an
        // action chunk (OpenVLA-OFT) goes back whole, one row per step.
        let action_dim = prediction.action.len();
        let action: Vec<f32> = match self.checkpoint.decoders.get(&prepared.unnorm_key) {
            Some(decoder) if !prediction.tokens.is_empty() => decoder
                .decode(&prediction.tokens)
                .1
                .iter()
                .map(|&v| v as f32)
                .collect(),
            _ => prediction
                .actions
                .iter()
                .flatten()
                .map(|&v| v as f32)
                .collect(),
        };
        let rows = action.len().checked_div(action_dim).unwrap_or(0);
        if rows == 0 || rows > MAX_REPLY_ROWS || rows * action_dim != action.len() {
            self.stats.failed.fetch_add(1, Ordering::Relaxed);
            self.reply.refuse(
                &prepared.pending.query,
                ReplyStatus::PolicyError,
                prepared.pending.request_id,
                &format!(
                    "the policy produced {} values, not 1 to {MAX_REPLY_ROWS} rows of {action_dim}",
                    action.len()
                ),
            );
            return;
        }
        if action.iter().any(|v| !v.is_finite()) {
            self.stats.failed.fetch_add(1, Ordering::Relaxed);
            self.reply.refuse(
                &prepared.pending.query,
                ReplyStatus::PolicyError,
                prepared.pending.request_id,
                "the policy produced a non-finite action",
            );
            return;
        }
        self.stats.answered.fetch_add(1, Ordering::Relaxed);
        let mut out = std::mem::take(&mut self.out);
        self.reply.send(
            &prepared.pending.query,
            ReplyParts {
                status: ReplyStatus::Ok,
                request_id: prepared.pending.request_id,
                capture_time_ns: prepared.capture_time_ns,
                timings,
                fingerprint: "",
                server_id: "",
                action_dim,
                actions: &action,
                tokens: &prediction.tokens,
                message: "",
            },
            &mut out,
        );
        self.out = out;
    }
}

fn micros(d: Duration) -> u32 {
    d.as_micros().min(u32::MAX as u128) as u32
}

/// The request's frame as an RGB image: raw bytes as they are, a JPEG decoded and checked
/// against the size the header states.
fn decode_frame(request: &Request<'_>) -> Result<RgbImage, String> {
    let (width, height) = (u32::from(request.width), u32::from(request.height));
    match request.encoding {
        FrameEncoding::Raw => Ok(RgbImage {
            width,
            height,
            data: request.frame.to_vec(),
        }),
        FrameEncoding::Jpeg => {
            let mut reader = image::ImageReader::with_format(
                std::io::Cursor::new(request.frame),
                image::ImageFormat::Jpeg,
            );
            let mut limits = image::Limits::default();
            limits.max_image_width = Some(width);
            limits.max_image_height = Some(height);
            reader.limits(limits);
            let decoded = reader
                .decode()
                .map_err(|e| format!("field frame: JPEG: {e}"))?
                .to_rgb8();
            if decoded.width() != width || decoded.height() != height {
                return Err(format!(
                    "field frame: a {}×{} JPEG, the header says {width}×{height}",
                    decoded.width(),
                    decoded.height()
                ));
            }
            Ok(RgbImage {
                width,
                height,
                data: decoded.into_raw(),
            })
        }
    }
}
