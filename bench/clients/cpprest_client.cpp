// cpprest-client: the C++ REST SDK (cpprestsdk, Casablanca) client of the bench harness (bench/run),
// load mode only.
//
// One web::http::client::http_client, configured with http_client_config: certificate validation on,
// an SSL context callback loading the CA file into the boost::asio::ssl::context, and cpprest's own
// OAuth 2.0 config (oauth2_config + set_token), so that cpprest adds "Authorization: Bearer TOKEN" to
// every request itself. C concurrent loops of asynchronous requests (pplx task continuations: each
// loop sends its next request once the previous one's body is read); cpprest's connection pool keeps
// the keep-alive connections. main waits for all loops.
//
//   cpprest-client load --url URL --token TOKEN --ca CA_PEM_FILE --requests N --concurrency C
//
// Prints one JSON line: {"ok","failed","seconds","p50_ms","p99_ms","body_bytes"}; exit 0 iff failed == 0.
#include <cpprest/http_client.h>
#include <cpprest/oauth2.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <future>
#include <mutex>
#include <set>
#include <string>
#include <string_view>
#include <vector>

namespace {

using namespace web::http;
using namespace web::http::client;
using clock_type = std::chrono::steady_clock;

struct options {
    std::string url, token, ca;
    long requests = 0, concurrency = 0;
};

int usage(const char* msg) {
    std::fprintf(stderr, "cpprest-client: %s\nusage: cpprest-client load --url URL --token TOKEN --ca CA_PEM_FILE "
                         "--requests N --concurrency C\n", msg);
    return 2;
}

bool parse_positive(const char* s, long& out) {
    char* end = nullptr;
    out = std::strtol(s, &end, 10);
    return *s != '\0' && *end == '\0' && out > 0;
}

// Returns 0 on success, else the exit status (2) after printing why.
int parse_args(int argc, char** argv, options& o) {
    if (argc < 2) return usage("missing mode");
    if (std::string_view(argv[1]) == "storm") return usage("storm mode is not supported by this client");
    if (std::string_view(argv[1]) != "load") return usage("unknown mode");
    for (int i = 2; i < argc; i += 2) {
        std::string_view k = argv[i];
        if (i + 1 >= argc) return usage("missing value");
        const char* v = argv[i + 1];
        if (k == "--url") o.url = v;
        else if (k == "--token") o.token = v;
        else if (k == "--ca") o.ca = v;
        else if (k == "--requests") { if (!parse_positive(v, o.requests)) return usage("bad --requests"); }
        else if (k == "--concurrency") { if (!parse_positive(v, o.concurrency)) return usage("bad --concurrency"); }
        else return usage("unknown option");
    }
    if (o.url.empty() || o.token.empty() || o.ca.empty() || o.requests == 0 || o.concurrency == 0)
        return usage("missing option");
    return 0;
}

double percentile_ms(const std::vector<double>& sorted, double p) {
    if (sorted.empty()) return 0;
    auto rank = static_cast<size_t>(std::max(1.0, std::ceil(p / 100.0 * static_cast<double>(sorted.size()))));
    return sorted[rank - 1];
}

// State shared by the C loops (they run on cpprest's thread pool).
struct run_state {
    run_state(http_client& c, utility::string_t r, size_t requests, long loops)
        : client(c), resource(std::move(r)), n(requests), latencies(requests), live_loops(loops) {}

    http_client& client;
    utility::string_t resource;  // path and query of URL
    size_t n;
    std::vector<double> latencies;  // indexed by request number: each slot written by one loop only
    std::atomic<size_t> next{0};
    std::atomic<long> ok{0}, failed{0}, live_loops;
    std::atomic<unsigned long long> body_bytes{0};
    std::mutex errors_mutex;
    std::set<std::string> errors;  // first few distinct errors
    clock_type::time_point end;
    std::promise<void> all_done;

    void note_error(const std::string& e) {
        std::lock_guard lock(errors_mutex);
        if (errors.size() < 5 && errors.insert(e).second) std::fprintf(stderr, "cpprest-client: %s\n", e.c_str());
    }
};

// One step of a loop: sends request number `next`, and from its completion, the loop's next request.
void send_next(run_state& st) {
    const size_t i = st.next.fetch_add(1);
    if (i >= st.n) {
        if (st.live_loops.fetch_sub(1) == 1) {
            st.end = clock_type::now();
            st.all_done.set_value();
        }
        return;
    }
    http_request request(methods::GET);
    request.set_request_uri(st.resource);
    request.headers().add(header_names::accept, U("application/json"));
    const auto sent = clock_type::now();
    st.client.request(request)
        .then([](http_response response) {
            return response.extract_vector().then([code = response.status_code()](std::vector<unsigned char> body) {
                return std::make_pair(code, body.size());
            });
        })
        .then([&st, i, sent](pplx::task<std::pair<status_code, size_t>> done) {
            st.latencies[i] = std::chrono::duration<double, std::milli>(clock_type::now() - sent).count();
            try {
                const auto [code, size] = done.get();
                if (code == status_codes::OK && size > 0) {
                    ++st.ok;
                    st.body_bytes += size;
                } else {
                    ++st.failed;
                    st.note_error("HTTP status " + std::to_string(code) + ", body " + std::to_string(size) + " bytes");
                }
            } catch (const std::exception& e) {
                ++st.failed;
                st.note_error(e.what());
            }
            send_next(st);
        });
}

}  // namespace

int main(int argc, char** argv) {
    options opt;
    if (int rc = parse_args(argc, argv, opt)) return rc;

    const web::uri url(utility::conversions::to_string_t(opt.url));
    http_client_config config;
    config.set_validate_certificates(true);
    // Every client waits as long as a request takes: under callgrind (bench/run's instruction
    // counts) requests run some fifty times slower than cpprest's default 30 s allows.
    config.set_timeout(std::chrono::minutes(30));
    config.set_ssl_context_callback([ca = opt.ca](boost::asio::ssl::context& ctx) { ctx.load_verify_file(ca); });
    web::http::oauth2::experimental::oauth2_config oauth2(U(""), U(""), U(""), U(""), U(""));
    oauth2.set_token(web::http::oauth2::experimental::oauth2_token(utility::conversions::to_string_t(opt.token)));
    config.set_oauth2(oauth2);
    http_client client(url.authority(), config);

    const long loops = std::min(opt.concurrency, opt.requests);
    run_state st(client, url.resource().to_string(), static_cast<size_t>(opt.requests), loops);
    auto finished = st.all_done.get_future();

    const auto start = clock_type::now();
    for (long k = 0; k < loops; ++k) send_next(st);
    finished.wait();

    std::sort(st.latencies.begin(), st.latencies.end());
    const long ok = st.ok, failed = st.failed;
    std::printf("{\"ok\":%ld,\"failed\":%ld,\"seconds\":%.3f,\"p50_ms\":%.3f,\"p99_ms\":%.3f,\"body_bytes\":%llu}\n",
                ok, failed, std::chrono::duration<double>(st.end - start).count(), percentile_ms(st.latencies, 50),
                percentile_ms(st.latencies, 99), st.body_bytes.load());
    return failed == 0 ? 0 : 1;
}
