// Reads command records as hex lines on stdin (one record per line, any length) and prints
// what vla_command.hpp makes of each: the fields, or the reason it was refused. A way to
// check a captured payload by hand, and the program tests/cpp_decoder.rs runs.
//
//   c++ -std=c++17 -O2 -o decode_records examples/cpp/decode_records.cpp
//   echo 564c4131... | ./decode_records
//
// With `--guard [MAX_AGE_NS]` each line is `<hex> <receive time, ns since the epoch>` or
// `silence <time>`, and it prints what a vla::Guard decides: `move`, `hold` or
// `halt <reason>`, then `halted=0|1` (for `silence`: `silence 0|1 halted=0|1`).
#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#include "vla_command.hpp"

static bool parse_hex(const std::string& line, std::vector<std::uint8_t>& bytes) {
    auto nibble = [](char c) -> int {
        if (c >= '0' && c <= '9') return c - '0';
        if (c >= 'a' && c <= 'f') return c - 'a' + 10;
        if (c >= 'A' && c <= 'F') return c - 'A' + 10;
        return -1;
    };
    if (line.size() % 2 != 0) return false;
    bytes.clear();
    for (std::size_t i = 0; i < line.size(); i += 2) {
        const int hi = nibble(line[i]), lo = nibble(line[i + 1]);
        if (hi < 0 || lo < 0) return false;
        bytes.push_back(static_cast<std::uint8_t>(hi << 4 | lo));
    }
    return true;
}

static const char* verdict_name(vla::Verdict verdict) {
    switch (verdict) {
        case vla::Verdict::Move: return "move";
        case vla::Verdict::Hold: return "hold";
        case vla::Verdict::Halt: return "halt";
    }
    return "?";
}

static int run_guard(std::uint64_t max_age_ns) {
    vla::Guard guard(max_age_ns);
    std::string line;
    std::vector<std::uint8_t> bytes;
    while (std::getline(std::cin, line)) {
        const std::size_t space = line.find(' ');
        if (space == std::string::npos) {
            std::printf("input: no receive time\n");
            continue;
        }
        const std::string first = line.substr(0, space);
        const std::uint64_t now = std::stoull(line.substr(space + 1));
        if (first == "silence") {
            const bool halted_now = guard.check_silence(now);
            std::printf("silence %d halted=%d\n", halted_now ? 1 : 0, guard.halted() ? 1 : 0);
            continue;
        }
        vla::Command command;
        vla::DecodeError error;
        vla::Judgement judgement;
        if (parse_hex(first, bytes) && vla::decode(bytes.data(), bytes.size(), command, error)) {
            judgement = guard.check(command, now);
        } else {
            judgement = guard.bad_record();
        }
        if (judgement.verdict == vla::Verdict::Halt) {
            std::printf("halt %s halted=%d\n", vla::describe(judgement.reason),
                        guard.halted() ? 1 : 0);
        } else {
            std::printf("%s halted=%d\n", verdict_name(judgement.verdict), guard.halted() ? 1 : 0);
        }
    }
    return 0;
}

int main(int argc, char** argv) {
    if (argc >= 2 && std::string(argv[1]) == "--guard") {
        return run_guard(argc >= 3 ? std::stoull(argv[2]) : 0);
    }
    std::string line;
    std::vector<std::uint8_t> bytes;
    while (std::getline(std::cin, line)) {
        if (!parse_hex(line, bytes)) {
            std::printf("input: not hex\n");
            continue;
        }
        vla::Command command;
        vla::DecodeError error;
        if (!vla::decode(bytes.data(), bytes.size(), command, error)) {
            std::printf("error %d %s\n", static_cast<int>(error), vla::describe(error));
            continue;
        }
        std::printf("ok %s %llu %llu %llu", vla::state_name(command.state),
                    static_cast<unsigned long long>(command.seq),
                    static_cast<unsigned long long>(command.tick_time_ns),
                    static_cast<unsigned long long>(command.capture_time_ns));
        // %.9g: enough digits that every f32 reads back to the same bits.
        for (float value : command.action) std::printf(" %.9g", static_cast<double>(value));
        std::printf("\n");
    }
    return 0;
}
