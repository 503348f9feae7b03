// curl-client: the C reference client of the bench harness (bench/run), load mode only.
//
// libcurl's multi interface, single-threaded: ONE multi handle driven by curl_multi_perform /
// curl_multi_poll, and C easy handles created once and reused for every request (removed from the
// multi handle when done, re-added for the next request). The multi handle's connection cache
// (CURLMOPT_MAXCONNECTS >= C) keeps the HTTP/1.1 keep-alive connections between requests. The TLS
// peer and host name are verified against the CA file. Each handle appends the body to its own
// std::string, which is cleared (capacity kept) between requests.
//
//   curl-client load --url URL --token TOKEN --ca CA_PEM_FILE --requests N --concurrency C
//
// Prints one JSON line: {"ok","failed","seconds","p50_ms","p99_ms","body_bytes"}; exit 0 iff failed == 0.
#include <curl/curl.h>

#include "load_client.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <set>
#include <string>
#include <string_view>
#include <vector>

namespace {

using namespace load_client;



// One in-flight slot: an easy handle reused for every request it sends.
struct slot {
    CURL* easy = nullptr;
    std::string body;
    clock_type::time_point sent;
    char error[CURL_ERROR_SIZE] = {};
};

size_t on_write(char* data, size_t size, size_t count, void* userdata) {
    static_cast<std::string*>(userdata)->append(data, size * count);
    return size * count;
}

}  // namespace

int main(int argc, char** argv) {
    options opt;
    if (int rc = parse_args("curl-client", argc, argv, opt)) return rc;
    const long n = opt.requests;
    const long c = std::min(opt.concurrency, n);

    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) return usage("curl-client", "curl_global_init failed");
    CURLM* multi = curl_multi_init();
    curl_multi_setopt(multi, CURLMOPT_MAXCONNECTS, c);

    const std::string auth = "Authorization: Bearer " + opt.token;
    curl_slist* headers = curl_slist_append(nullptr, auth.c_str());
    headers = curl_slist_append(headers, "Accept: application/json");

    std::vector<slot> slots(static_cast<size_t>(c));  // never resized: handles keep pointers into it
    for (slot& s : slots) {
        s.easy = curl_easy_init();
        s.body.reserve(16 * 1024);
        curl_easy_setopt(s.easy, CURLOPT_URL, opt.url.c_str());
        curl_easy_setopt(s.easy, CURLOPT_HTTPHEADER, headers);
        curl_easy_setopt(s.easy, CURLOPT_HTTP_VERSION, static_cast<long>(CURL_HTTP_VERSION_1_1));
        curl_easy_setopt(s.easy, CURLOPT_CAINFO, opt.ca.c_str());
        curl_easy_setopt(s.easy, CURLOPT_CAPATH, nullptr);  // only the bench CA, as every other client
        curl_easy_setopt(s.easy, CURLOPT_SSL_VERIFYPEER, 1L);
        curl_easy_setopt(s.easy, CURLOPT_SSL_VERIFYHOST, 2L);
        curl_easy_setopt(s.easy, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(s.easy, CURLOPT_WRITEFUNCTION, on_write);
        curl_easy_setopt(s.easy, CURLOPT_WRITEDATA, &s.body);
        curl_easy_setopt(s.easy, CURLOPT_ERRORBUFFER, s.error);
        curl_easy_setopt(s.easy, CURLOPT_PRIVATE, &s);
    }

    std::vector<double> latencies;
    latencies.reserve(static_cast<size_t>(n));
    long sent = 0, ok = 0, failed = 0;
    unsigned long long body_bytes = 0;
    std::set<std::string> errors;  // first few distinct errors

    auto send = [&](slot& s) {
        s.body.clear();
        s.error[0] = '\0';
        s.sent = clock_type::now();
        curl_multi_add_handle(multi, s.easy);
        ++sent;
    };

    const auto start = clock_type::now();
    for (slot& s : slots) send(s);

    while (ok + failed < n) {
        int running = 0;
        if (CURLMcode mc = curl_multi_perform(multi, &running); mc != CURLM_OK) {
            std::fprintf(stderr, "curl_multi_perform: %s\n", curl_multi_strerror(mc));
            break;
        }
        int queued = 0;
        while (CURLMsg* msg = curl_multi_info_read(multi, &queued)) {
            if (msg->msg != CURLMSG_DONE) continue;
            const auto now = clock_type::now();
            slot* s = nullptr;
            curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, &s);
            latencies.push_back(std::chrono::duration<double, std::milli>(now - s->sent).count());
            long status = 0;
            curl_easy_getinfo(s->easy, CURLINFO_RESPONSE_CODE, &status);
            const CURLcode result = msg->data.result;  // read before removing: msg is freed by remove
            if (result == CURLE_OK && status == 200 && !s->body.empty()) {
                ++ok;
                body_bytes += s->body.size();
            } else {
                ++failed;
                if (errors.size() < 5) {
                    std::string e = result != CURLE_OK
                        ? std::string(curl_easy_strerror(result)) + (s->error[0] ? ": " + std::string(s->error) : "")
                        : "HTTP status " + std::to_string(status) + ", body " + std::to_string(s->body.size()) + " bytes";
                    if (errors.insert(e).second) std::fprintf(stderr, "curl-client: %s\n", e.c_str());
                }
            }
            curl_multi_remove_handle(multi, s->easy);
            if (sent < n) send(*s);
        }
        if (ok + failed < n) curl_multi_poll(multi, nullptr, 0, 1000, nullptr);
    }
    const auto end = clock_type::now();

    for (slot& s : slots) {
        curl_multi_remove_handle(multi, s.easy);
        curl_easy_cleanup(s.easy);
    }
    curl_multi_cleanup(multi);
    curl_slist_free_all(headers);
    curl_global_cleanup();

    failed += n - ok - failed;  // requests never completed (multi error) count as failed
    return report(ok, failed, end - start, latencies, body_bytes);
}
