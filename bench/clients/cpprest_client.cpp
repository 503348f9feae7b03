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

#include "load_client.hpp"

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

using namespace load_client;

using namespace web::http;
using namespace web::http::client;


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
    if (int rc = parse_args("cpprest-client", argc, argv, opt)) return rc;

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

    return report(st.ok, st.failed, st.end - start, st.latencies, st.body_bytes.load());
}
