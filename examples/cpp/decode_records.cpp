// Reads command records as hex lines on stdin (one record per line, any length) and prints
// what vla_command.hpp makes of each: the fields, or the reason it was refused. A way to
// check a captured payload by hand, and the program tests/cpp_decoder.rs runs.
//
//   c++ -std=c++17 -O2 -o decode_records examples/cpp/decode_records.cpp
//   echo 564c4131... | ./decode_records
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

int main() {
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
