// load_client.hpp — what the C and C++ rival clients of bench/run share: the
// load-mode command line and the one JSON result line (bench/README.md).
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

namespace load_client {

using clock_type = std::chrono::steady_clock;

struct options {
    std::string url, token, ca;
    long requests = 0, concurrency = 0;
};

inline int usage(const char* program, const char* msg) {
    std::fprintf(stderr, "%s: %s\nusage: %s load --url URL --token TOKEN --ca CA_PEM_FILE "
                         "--requests N --concurrency C\n", program, msg, program);
    return 2;
}

inline bool parse_positive(const char* s, long& out) {
    char* end = nullptr;
    out = std::strtol(s, &end, 10);
    return *s != '\0' && *end == '\0' && out > 0;
}

// Returns 0 on success, else the exit status (2) after printing why.
inline int parse_args(const char* program, int argc, char** argv, options& o) {
    if (argc < 2) return usage(program, "missing mode");
    if (std::string_view(argv[1]) == "storm") return usage(program, "storm mode is not supported by this client");
    if (std::string_view(argv[1]) != "load") return usage(program, "unknown mode");
    for (int i = 2; i < argc; i += 2) {
        std::string_view k = argv[i];
        if (i + 1 >= argc) return usage(program, "missing value");
        const char* v = argv[i + 1];
        if (k == "--url") o.url = v;
        else if (k == "--token") o.token = v;
        else if (k == "--ca") o.ca = v;
        else if (k == "--requests") { if (!parse_positive(v, o.requests)) return usage(program, "bad --requests"); }
        else if (k == "--concurrency") { if (!parse_positive(v, o.concurrency)) return usage(program, "bad --concurrency"); }
        else return usage(program, "unknown option");
    }
    if (o.url.empty() || o.token.empty() || o.ca.empty() || o.requests == 0 || o.concurrency == 0)
        return usage(program, "missing option");
    return 0;
}

// Nearest rank on the sorted latencies.
inline double percentile_ms(const std::vector<double>& sorted, double p) {
    if (sorted.empty()) return 0;
    auto rank = static_cast<size_t>(std::max(1.0, std::ceil(p / 100.0 * static_cast<double>(sorted.size()))));
    return sorted[rank - 1];
}

// Prints the result line (sorting `latencies`); the exit status: 0 iff nothing failed.
inline int report(long ok, long failed, clock_type::duration elapsed, std::vector<double>& latencies,
                  unsigned long long body_bytes) {
    std::sort(latencies.begin(), latencies.end());
    std::printf("{\"ok\":%ld,\"failed\":%ld,\"seconds\":%.3f,\"p50_ms\":%.3f,\"p99_ms\":%.3f,\"body_bytes\":%llu}\n",
                ok, failed, std::chrono::duration<double>(elapsed).count(), percentile_ms(latencies, 50),
                percentile_ms(latencies, 99), body_bytes);
    return failed == 0 ? 0 : 1;
}

}  // namespace load_client
