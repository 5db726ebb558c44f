// vla-rt command record v1 for C++ arm drivers: decoding and checking of the 64-byte payload
// published on `vla/<robot_id>/cmd` (ARCHITECTURE.md §9). Header-only, C++17, no dependencies; the
// payload bytes come from any Zenoh binding (zenoh-cpp: the sample's payload as bytes).
//
//   vla::Command command;
//   vla::DecodeError error;
//   if (!vla::decode(bytes.data(), bytes.size(), command, error)) {
//       halt_arm();  // never act on a record that does not check out
//       log(vla::describe(error));
//   } else if (command.state == vla::State::Act) {
//       apply_delta(command.action);
//   }
//
// Checks, in the order of the Rust decoder (`vla_rt::control::command_record`): length, CRC-32
// (IEEE) over bytes 0..60, magic `VLA1`, version 1, state. Fields are read little-endian
// byte by byte, so the host's byte order does not matter.
//
// A record that checks out may still be one not to act on: `vla::Guard` applies the rules of
// the Rust `vla_rt::transport::guard::CommandGuard` (age, seq gaps, silence, STOP latching
// until the next ACT), and every driver should:
//
//   vla::Guard guard;  // maximum age: two tick periods, learned from the records
//   const vla::Judgement j = ok ? guard.check(command, now_unix_ns()) : guard.bad_record();
//   if (j.verdict == vla::Verdict::Move) apply_delta(command.action);
//   else if (j.verdict == vla::Verdict::Halt) halt_arm();
//   // and, when no record came for a while:
//   if (guard.check_silence(now_unix_ns())) halt_arm();
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>

namespace vla {

constexpr std::size_t kRecordLen = 64;
constexpr std::uint16_t kVersion = 1;

enum class State : std::uint16_t { Act = 0, Hold = 1, Stop = 2 };

struct Command {
    State state = State::Stop;
    /// +1 every published command, from 0.
    std::uint64_t seq = 0;
    /// CLOCK_REALTIME at the tick, ns since the Unix epoch.
    std::uint64_t tick_time_ns = 0;
    /// Capture time of the frame the action came from, ns since the Unix epoch; 0 if none.
    std::uint64_t capture_time_ns = 0;
    /// dx, dy, dz, droll, dpitch, dyaw, gripper (units of the policy's un-normalized actions).
    std::array<float, 7> action{};
};

enum class DecodeError { WrongLength, BadCrc, BadMagic, UnsupportedVersion, UnknownState };

inline const char* describe(DecodeError error) {
    switch (error) {
        case DecodeError::WrongLength: return "command record: not 64 bytes";
        case DecodeError::BadCrc: return "command record: CRC does not match the content";
        case DecodeError::BadMagic: return "command record: magic is not VLA1";
        case DecodeError::UnsupportedVersion: return "command record: version is not 1";
        case DecodeError::UnknownState: return "command record: unknown state";
    }
    return "command record: unknown error";
}

inline const char* state_name(State state) {
    switch (state) {
        case State::Act: return "ACT";
        case State::Hold: return "HOLD";
        case State::Stop: return "STOP";
    }
    return "?";
}

/// CRC-32/IEEE (zlib's `crc32`, Rust's `crc32fast`), bitwise: 60 bytes per record.
inline std::uint32_t crc32_ieee(const std::uint8_t* data, std::size_t len) {
    std::uint32_t crc = 0xFFFFFFFFu;
    for (std::size_t i = 0; i < len; ++i) {
        crc ^= data[i];
        for (int bit = 0; bit < 8; ++bit) crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
    }
    return ~crc;
}

namespace detail {
inline std::uint64_t read_le(const std::uint8_t* p, int bytes) {
    std::uint64_t value = 0;
    for (int i = bytes - 1; i >= 0; --i) value = (value << 8) | p[i];
    return value;
}
}  // namespace detail

/// Decodes `len` bytes into `out`; false, with `error` set and `out` untouched, when the
/// record does not check out.
inline bool decode(const std::uint8_t* data, std::size_t len, Command& out, DecodeError& error) {
    if (data == nullptr || len != kRecordLen) {
        error = DecodeError::WrongLength;
        return false;
    }
    if (crc32_ieee(data, 60) != static_cast<std::uint32_t>(detail::read_le(data + 60, 4))) {
        error = DecodeError::BadCrc;
        return false;
    }
    if (std::memcmp(data, "VLA1", 4) != 0) {
        error = DecodeError::BadMagic;
        return false;
    }
    if (detail::read_le(data + 4, 2) != kVersion) {
        error = DecodeError::UnsupportedVersion;
        return false;
    }
    const std::uint64_t state = detail::read_le(data + 6, 2);
    if (state > static_cast<std::uint64_t>(State::Stop)) {
        error = DecodeError::UnknownState;
        return false;
    }
    Command command;
    command.state = static_cast<State>(state);
    command.seq = detail::read_le(data + 8, 8);
    command.tick_time_ns = detail::read_le(data + 16, 8);
    command.capture_time_ns = detail::read_le(data + 24, 8);
    for (std::size_t i = 0; i < command.action.size(); ++i) {
        const auto bits = static_cast<std::uint32_t>(detail::read_le(data + 32 + 4 * i, 4));
        std::memcpy(&command.action[i], &bits, sizeof bits);
    }
    out = command;
    return true;
}

/// What to do with one record.
enum class Verdict { Move, Hold, Halt };

/// Why the arm must halt (names as in the Rust `HaltReason`).
enum class HaltReason { None, Stop, Stale, Gap, Restart, Unjudged, Silence, BadRecord };

inline const char* describe(HaltReason reason) {
    switch (reason) {
        case HaltReason::None: return "none";
        case HaltReason::Stop: return "stop";
        case HaltReason::Stale: return "stale";
        case HaltReason::Gap: return "gap";
        case HaltReason::Restart: return "restart";
        case HaltReason::Unjudged: return "unjudged";
        case HaltReason::Silence: return "silence";
        case HaltReason::BadRecord: return "bad-record";
    }
    return "?";
}

struct Judgement {
    Verdict verdict = Verdict::Halt;
    HaltReason reason = HaltReason::None;
};

/// The checks a driver makes before acting on a decoded record; the arm starts halted.
///
/// - Age: a record older than the maximum age on arrival (receive time minus tick time,
///   both CLOCK_REALTIME, so the clocks must be synchronised across machines) halts. The
///   maximum age is `max_age_ns`, or two tick periods, the period being the smallest
///   tick-time step between two consecutive seq; until one is known, nothing can be judged.
/// - Gaps: records missing for longer than the maximum age halt; a seq that does not
///   increase (a restarted service) halts and the period is learned again.
/// - Silence: `check_silence` halts once the newest record is older than the maximum age.
/// - STOP latches: after any halt, HOLD keeps the arm halted; only an ACT that passes the
///   checks moves it again (the service leaves STOP only on a new `arm`, so an ACT after a
///   STOP comes from a newer arming).
class Guard {
public:
    /// `max_age_ns` 0: two tick periods, learned from the records.
    explicit Guard(std::uint64_t max_age_ns = 0) : fixed_max_age_ns_(max_age_ns) {}

    bool halted() const { return halted_; }

    /// The maximum age in use; false while it is not known yet.
    bool max_age_ns(std::uint64_t& out) const {
        if (fixed_max_age_ns_ != 0) {
            out = fixed_max_age_ns_;
            return true;
        }
        if (period_ns_ == 0) return false;
        out = period_ns_ > UINT64_MAX / 2 ? UINT64_MAX : 2 * period_ns_;
        return true;
    }

    /// Judges `command`, received at `now_unix_ns`.
    Judgement check(const Command& command, std::uint64_t now_unix_ns) {
        HaltReason sequence_problem = HaltReason::None;
        if (has_last_) {
            if (command.seq <= last_seq_) {
                period_ns_ = 0;
                sequence_problem = HaltReason::Restart;
            } else if (command.seq == last_seq_ + 1) {
                const std::uint64_t step = since(command.tick_time_ns, last_tick_ns_);
                if (step > 0 && (period_ns_ == 0 || step < period_ns_)) period_ns_ = step;
            } else {
                std::uint64_t max = 0;
                if (!max_age_ns(max) || since(command.tick_time_ns, last_tick_ns_) > max) {
                    sequence_problem = HaltReason::Gap;
                }
            }
        }
        has_last_ = true;
        last_seq_ = command.seq;
        last_tick_ns_ = command.tick_time_ns;
        HaltReason age_problem = HaltReason::None;
        std::uint64_t max = 0;
        if (!max_age_ns(max)) {
            age_problem = HaltReason::Unjudged;
        } else if (since(now_unix_ns, command.tick_time_ns) > max) {
            age_problem = HaltReason::Stale;
        }
        HaltReason reason = command.state == State::Stop ? HaltReason::Stop
                            : sequence_problem != HaltReason::None ? sequence_problem
                                                                  : age_problem;
        Judgement judgement;
        if (reason != HaltReason::None) {
            halted_ = true;
            judgement.verdict = Verdict::Halt;
            judgement.reason = reason;
        } else if (command.state == State::Act) {
            halted_ = false;
            judgement.verdict = Verdict::Move;
        } else {
            judgement.verdict = Verdict::Hold;
        }
        return judgement;
    }

    /// A payload that did not decode: halt.
    Judgement bad_record() {
        halted_ = true;
        Judgement judgement;
        judgement.reason = HaltReason::BadRecord;
        return judgement;
    }

    /// True when the arm just halted because the newest record got older than the maximum age.
    bool check_silence(std::uint64_t now_unix_ns) {
        std::uint64_t max = 0;
        if (halted_ || !has_last_ || !max_age_ns(max)) return false;
        if (since(now_unix_ns, last_tick_ns_) > max) {
            halted_ = true;
            return true;
        }
        return false;
    }

private:
    static std::uint64_t since(std::uint64_t later, std::uint64_t earlier) {
        return later > earlier ? later - earlier : 0;
    }

    std::uint64_t fixed_max_age_ns_;
    std::uint64_t period_ns_ = 0;
    bool has_last_ = false;
    std::uint64_t last_seq_ = 0;
    std::uint64_t last_tick_ns_ = 0;
    bool halted_ = true;
};

}  // namespace vla
