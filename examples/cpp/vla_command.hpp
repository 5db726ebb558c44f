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
// Checks, in the order of the Rust decoder (`vla_rt::transport::record`): length, CRC-32
// (IEEE) over bytes 0..60, magic `VLA1`, version 1, state. Fields are read little-endian
// byte by byte, so the host's byte order does not matter.
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

}  // namespace vla
