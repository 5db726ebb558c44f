//! The robot's side of remote inference: a [`Policy`] whose `predict` sends the frame to the
//! servers of a name and waits, until the request's own deadline, for the answer of the one
//! responsible for this robot. Everything downstream (pacing, limits, arming, supervision,
//! recording) is the service's as it is for a local backend: a late, refused or mismatched
//! reply is a failed prediction, so the tick counts a missed step and STOPs after
//! `stop_after_misses`.

use std::time::{Duration, Instant};

use zenoh::query::{ConsolidationMode, Querier, QueryTarget};
use zenoh::{Session, Wait};

use super::wire::{instruction_hash, FrameEncoding, InstructionField, Reply, ReplyStatus, Request};
use super::{infer_key, ResolvedRemote};
use crate::config::ACTION_DIM;
use crate::policy::{Policy, PolicyError, Prediction, StageTimings};
use crate::preprocess::RgbImage;

const BACKEND: &str = "remote";

/// How long the first prediction (the service's warm-up, never published) may wait for a
/// server: the router may still be learning of the robot's querier and the server's
/// queryable, and the server may be loading. Every later request has one step.
pub const FIRST_ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// A policy answered by `vla-rt serve` processes over Zenoh.
pub struct RemotePolicy {
    querier: Querier<'static>,
    name: String,
    robot_id: String,
    unnorm_key: String,
    expected_fingerprint: String,
    timeout: Duration,
    encoding: FrameEncoding,
    jpeg_quality: u8,
    next_request_id: u64,
    /// The instruction the servers have answered in full, so its hash can stand in for it.
    acknowledged: Option<(String, [u8; 32])>,
    request: Vec<u8>,
    jpeg: Vec<u8>,
    /// The id of the server that gave the latest answer.
    last_server: String,
    answered_once: bool,
}

fn backend_error(message: String) -> PolicyError {
    PolicyError::Backend {
        backend: BACKEND,
        message,
    }
}

impl RemotePolicy {
    /// Declares the querier on `vla/policy/<name>/infer`. `config.fingerprint` is the
    /// checkpoint the robot was configured for; `unnorm_key` the statistics to un-normalise
    /// with (unset: the server's).
    pub fn connect(
        session: &Session,
        config: &ResolvedRemote,
        robot_id: &str,
        unnorm_key: Option<&str>,
    ) -> Result<Self, PolicyError> {
        let key = infer_key(&config.name);
        let timeout = Duration::from_millis(config.timeout_ms);
        // Every server of the name gets the request and only the one responsible for this
        // robot answers (ARCHITECTURE.md §16): `All`, since `BestMatching` would pick the
        // first server Zenoh knows, whatever its load or state; no consolidation, so that the
        // answer is handed over the moment it arrives instead of being held for the others.
        let querier = session
            .declare_querier(key.clone())
            .target(QueryTarget::All)
            .consolidation(ConsolidationMode::None)
            .timeout(timeout)
            .wait()
            .map_err(|e| PolicyError::Unavailable {
                backend: BACKEND,
                message: format!(
                    "declaring the querier on {key}: {}",
                    crate::transport::zenoh_error_text(&*e)
                ),
            })?;
        Ok(Self {
            querier,
            name: config.name.clone(),
            robot_id: robot_id.to_string(),
            unnorm_key: unnorm_key.unwrap_or_default().to_string(),
            expected_fingerprint: config.fingerprint.clone(),
            timeout,
            encoding: config.encoding,
            jpeg_quality: config.jpeg_quality,
            next_request_id: 1,
            acknowledged: None,
            request: Vec::new(),
            jpeg: Vec::new(),
            last_server: String::new(),
            answered_once: false,
        })
    }

    fn encode_request(
        &mut self,
        image: &RgbImage,
        instruction: &str,
        request_id: u64,
        budget: Duration,
        send_text: bool,
    ) -> Result<(), PolicyError> {
        let (width, height) = match (u16::try_from(image.width), u16::try_from(image.height)) {
            (Ok(w), Ok(h)) => (w, h),
            _ => {
                return Err(backend_error(format!(
                    "a {}×{} frame is too large to send",
                    image.width, image.height
                )))
            }
        };
        let frame: &[u8] = match self.encoding {
            FrameEncoding::Raw => &image.data,
            FrameEncoding::Jpeg => {
                self.jpeg.clear();
                image::codecs::jpeg::JpegEncoder::new_with_quality(
                    &mut self.jpeg,
                    self.jpeg_quality,
                )
                .encode(
                    &image.data,
                    image.width,
                    image.height,
                    image::ExtendedColorType::Rgb8,
                )
                .map_err(|e| backend_error(format!("JPEG encoding of the frame: {e}")))?;
                &self.jpeg
            }
        };
        let hash = match &self.acknowledged {
            Some((text, hash)) if !send_text && text == instruction => Some(*hash),
            _ => None,
        };
        let request = Request {
            request_id,
            capture_time_ns: crate::control::clock::monotonic_ns(),
            budget_us: budget.as_micros().min(u32::MAX as u128) as u32,
            robot_id: &self.robot_id,
            unnorm_key: &self.unnorm_key,
            instruction: match hash {
                Some(hash) => InstructionField::Hash(hash),
                None => InstructionField::Text(instruction),
            },
            encoding: self.encoding,
            width,
            height,
            frame,
        };
        let mut out = std::mem::take(&mut self.request);
        let encoded = request.encode(&mut out);
        self.request = out;
        encoded.map_err(|e| backend_error(format!("request: {e}")))
    }

    /// An answered prediction: the instruction may travel as its hash from now on (hashed
    /// once per new instruction), and the total time is the robot's.
    fn accept(
        &mut self,
        mut prediction: Prediction,
        instruction: &str,
        start: Instant,
    ) -> Prediction {
        if self
            .acknowledged
            .as_ref()
            .is_none_or(|(text, _)| text != instruction)
        {
            self.acknowledged = Some((instruction.to_string(), instruction_hash(instruction)));
        }
        prediction.timings.total_ms = start.elapsed().as_secs_f64() * 1e3;
        prediction
    }

    /// The id of the server that gave the latest answer (empty before the first).
    pub fn last_server(&self) -> &str {
        &self.last_server
    }

    /// Sends one request and waits for its answer until `deadline`.
    fn exchange(
        &mut self,
        image: &RgbImage,
        instruction: &str,
        deadline: Instant,
        send_text: bool,
    ) -> Result<Answer, PolicyError> {
        let request_id = self.next_request_id;
        self.next_request_id += 1;
        let budget = deadline.saturating_duration_since(Instant::now());
        self.encode_request(image, instruction, request_id, budget, send_text)?;
        // Replies go through a callback into a channel of this request alone, so that a
        // reply arriving after the robot stopped waiting is dropped quietly.
        let (sender, replies) = crossbeam::channel::bounded(8);
        self.querier
            .get()
            .payload(self.request.as_slice())
            .callback(move |reply| {
                let _ = sender.try_send(reply);
            })
            .wait()
            .map_err(|e| {
                backend_error(format!(
                    "sending to {}: {}",
                    self.querier.key_expr(),
                    crate::transport::zenoh_error_text(&*e)
                ))
            })?;
        let mut refusals = Vec::new();
        loop {
            let reply: zenoh::query::Reply = match replies.recv_deadline(deadline) {
                Ok(reply) => reply,
                // The deadline came first, or the query ended (every server answered or
                // Zenoh's timeout passed).
                Err(_) => break,
            };
            let Ok(sample) = reply.result() else {
                continue;
            };
            let payload = sample.payload().to_bytes();
            let decoded = match Reply::decode(&payload) {
                Ok(decoded) => decoded,
                Err(e) => {
                    refusals.push(format!("an unreadable reply ({e})"));
                    continue;
                }
            };
            if decoded.request_id != request_id {
                continue;
            }
            if Instant::now() > deadline {
                break;
            }
            if decoded.fingerprint != self.expected_fingerprint {
                return Ok(Answer::WrongCheckpoint(format!(
                    "server {} of `{}` runs checkpoint {}, this robot is configured for {}: \
                     its actions are refused",
                    decoded.server_id, self.name, decoded.fingerprint, self.expected_fingerprint
                )));
            }
            match decoded.status {
                ReplyStatus::Ok => {
                    self.last_server.clear();
                    self.last_server.push_str(decoded.server_id);
                    return Answer::from_reply(&decoded);
                }
                ReplyStatus::UnknownInstruction => return Ok(Answer::SendText),
                status => refusals.push(format!(
                    "server {}: {}{}",
                    decoded.server_id,
                    status.name(),
                    if decoded.message.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", decoded.message)
                    }
                )),
            }
        }
        Ok(if refusals.is_empty() {
            Answer::Silence
        } else {
            Answer::Refused(format!("`{}` refused: {}", self.name, refusals.join("; ")))
        })
    }

    fn no_answer(&self, waited: Duration) -> PolicyError {
        backend_error(format!(
            "no answer from `{}` within {} ms (is a `vla-rt serve --name {}` reachable?)",
            self.name,
            waited.as_millis(),
            self.name
        ))
    }
}

impl RemotePolicy {
    /// The first prediction: retried until [`FIRST_ANSWER_TIMEOUT`], each try with the
    /// configured timeout, since a query sent before the router knows a server reaches none.
    fn first_prediction(
        &mut self,
        image: &RgbImage,
        instruction: &str,
        start: Instant,
    ) -> Result<Prediction, PolicyError> {
        let give_up = start + FIRST_ANSWER_TIMEOUT.max(self.timeout);
        // Why the servers said no, if they did: a try cut short by `give_up` may hear nothing,
        // and the reason is worth more than "no answer".
        let mut refused = None;
        loop {
            let deadline = (Instant::now() + self.timeout).min(give_up);
            match self.exchange(image, instruction, deadline, true)? {
                Answer::Prediction(prediction) => {
                    self.answered_once = true;
                    return Ok(self.accept(prediction, instruction, start));
                }
                // A mismatched checkpoint does not get better by asking again.
                Answer::WrongCheckpoint(message) => return Err(backend_error(message)),
                Answer::Refused(message) => refused = Some(message),
                Answer::SendText | Answer::Silence => {}
            }
            if Instant::now() >= give_up {
                return Err(match refused {
                    Some(message) => backend_error(message),
                    None => self.no_answer(give_up.duration_since(start)),
                });
            }
            std::thread::sleep(
                Duration::from_millis(20).min(give_up.saturating_duration_since(Instant::now())),
            );
        }
    }
}

enum Answer {
    Prediction(Prediction),
    /// The server does not know the instruction's hash.
    SendText,
    /// The answering server runs another checkpoint.
    WrongCheckpoint(String),
    /// Every answer was a refusal (busy, expired, bad request, policy error).
    Refused(String),
    /// No answer before the deadline.
    Silence,
}

impl Answer {
    fn from_reply(reply: &Reply<'_>) -> Result<Self, PolicyError> {
        if reply.action_dim != ACTION_DIM {
            return Err(backend_error(format!(
                "server {} sent actions of {} values; the command record carries {ACTION_DIM}",
                reply.server_id, reply.action_dim
            )));
        }
        // One row from the token path, a chunk's rows from an OpenVLA-OFT checkpoint; the
        // decoder saw to at least one row of finite values.
        let actions: Vec<Vec<f64>> = (0..reply.rows)
            .map(|row| {
                (0..ACTION_DIM)
                    .map(|column| f64::from(reply.action(row, column)))
                    .collect()
            })
            .collect();
        let action = actions.first().cloned().unwrap_or_default();
        let compute_ms = f64::from(reply.timings.compute_us) / 1e3;
        Ok(Self::Prediction(Prediction {
            tokens: reply.tokens().take(ACTION_DIM).collect(),
            normalized: Vec::new(),
            actions,
            action,
            timings: StageTimings {
                decode_ms: compute_ms,
                ..StageTimings::default()
            },
        }))
    }
}

impl Policy for RemotePolicy {
    fn predict(&mut self, image: &RgbImage, instruction: &str) -> Result<Prediction, PolicyError> {
        if instruction.trim().is_empty() {
            return Err(PolicyError::EmptyInstruction);
        }
        image.validate()?;
        let start = Instant::now();
        if !self.answered_once {
            return self.first_prediction(image, instruction, start);
        }
        let deadline = start + self.timeout;
        let mut answer = self.exchange(image, instruction, deadline, false)?;
        if matches!(answer, Answer::SendText) {
            // A server that has not seen the text (a restart, a failover): once more in full.
            answer = self.exchange(image, instruction, deadline, true)?;
        }
        match answer {
            Answer::Prediction(prediction) => Ok(self.accept(prediction, instruction, start)),
            Answer::SendText => Err(backend_error(format!(
                "`{}` does not take the instruction's text",
                self.name
            ))),
            Answer::WrongCheckpoint(message) | Answer::Refused(message) => {
                Err(backend_error(message))
            }
            Answer::Silence => Err(self.no_answer(self.timeout)),
        }
    }

    fn action_dim(&self) -> usize {
        ACTION_DIM
    }

    fn backend_name(&self) -> &'static str {
        BACKEND
    }

    fn model_name(&self) -> &str {
        &self.name
    }
}
