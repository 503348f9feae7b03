// curl-client: the C reference client of the bench harness (bench/run), load mode only.
//
// libcurl at its strongest for this job (bench/README.md says why each choice): the multi
// interface driven the event-driven way, single-threaded. curl_multi_socket_action on an epoll
// set wakes only the transfer whose socket is ready (curl_multi_perform + curl_multi_poll would
// visit every transfer and poll every socket on each turn: O(C) work per response). C easy
// handles are created once and reused for every request (removed from the multi handle when done,
// re-added for the next); the multi handle's connection cache (CURLMOPT_MAXCONNECTS = C, at most C
// per host) keeps the HTTP/1.1 keep-alive connections, and a share handle lets the easy handles
// resume one another's TLS sessions. The TLS peer and host name are verified against the CA
// file. Each handle appends the body to its own std::string, cleared (capacity kept) between
// requests.
//
//   curl-client load --url URL --token TOKEN --ca CA_PEM_FILE --requests N --concurrency C
//
// Prints one JSON line: {"ok","failed","seconds","p50_ms","p99_ms","body_bytes"}; exit 0 iff failed == 0.
#include <curl/curl.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "load_client.hpp"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <set>
#include <string>
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

// The event loop libcurl drives through its socket and timer callbacks.
struct event_loop {
    int epoll_fd = -1;
    long timeout_ms = -1;  // libcurl's next timeout; -1: none
    clock_type::time_point deadline = clock_type::time_point::max();
};

int on_socket(CURL*, curl_socket_t s, int what, void* userp, void*) {
    auto* loop = static_cast<event_loop*>(userp);
    if (what == CURL_POLL_REMOVE) {
        epoll_ctl(loop->epoll_fd, EPOLL_CTL_DEL, s, nullptr);  // libcurl may have closed it already
        return 0;
    }
    epoll_event ev{};
    ev.events = ((what & CURL_POLL_IN) ? EPOLLIN : 0u) | ((what & CURL_POLL_OUT) ? EPOLLOUT : 0u);
    ev.data.fd = s;
    // A descriptor number can come back for a new socket: add or modify, whichever applies.
    if (epoll_ctl(loop->epoll_fd, EPOLL_CTL_MOD, s, &ev) != 0 && errno == ENOENT)
        epoll_ctl(loop->epoll_fd, EPOLL_CTL_ADD, s, &ev);
    return 0;
}

int on_timer(CURLM*, long timeout_ms, void* userp) {
    auto* loop = static_cast<event_loop*>(userp);
    loop->timeout_ms = timeout_ms;
    loop->deadline = timeout_ms < 0 ? clock_type::time_point::max()
                                    : clock_type::now() + std::chrono::milliseconds(timeout_ms);
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    options opt;
    if (int rc = parse_args("curl-client", argc, argv, opt)) return rc;
    const long n = opt.requests;
    const long c = std::min(opt.concurrency, n);

    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) return usage("curl-client", "curl_global_init failed");
    event_loop loop;
    loop.epoll_fd = epoll_create1(EPOLL_CLOEXEC);
    CURLM* multi = curl_multi_init();
    curl_multi_setopt(multi, CURLMOPT_MAXCONNECTS, c);
    curl_multi_setopt(multi, CURLMOPT_MAX_HOST_CONNECTIONS, c);
    curl_multi_setopt(multi, CURLMOPT_SOCKETFUNCTION, on_socket);
    curl_multi_setopt(multi, CURLMOPT_SOCKETDATA, &loop);
    curl_multi_setopt(multi, CURLMOPT_TIMERFUNCTION, on_timer);
    curl_multi_setopt(multi, CURLMOPT_TIMERDATA, &loop);
    CURLSH* share = curl_share_init();  // one thread: no lock functions needed
    curl_share_setopt(share, CURLSHOPT_SHARE, CURL_LOCK_DATA_SSL_SESSION);

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
        curl_easy_setopt(s.easy, CURLOPT_SHARE, share);
        curl_easy_setopt(s.easy, CURLOPT_TCP_NODELAY, 1L);
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
    int running = 0;

    auto send = [&](slot& s) {
        s.body.clear();
        s.error[0] = '\0';
        s.sent = clock_type::now();
        curl_multi_add_handle(multi, s.easy);
        ++sent;
    };

    auto collect = [&] {
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
    };

    const auto start = clock_type::now();
    for (slot& s : slots) send(s);

    std::vector<epoll_event> events(static_cast<size_t>(c) + 1);
    while (ok + failed < n) {
        if (loop.timeout_ms == 0 || clock_type::now() >= loop.deadline) {
            loop.timeout_ms = -1;
            loop.deadline = clock_type::time_point::max();
            curl_multi_socket_action(multi, CURL_SOCKET_TIMEOUT, 0, &running);
            collect();
            continue;
        }
        const int wait_ms = loop.timeout_ms < 0 ? 1000 : static_cast<int>(loop.timeout_ms);
        const int ready = epoll_wait(loop.epoll_fd, events.data(), static_cast<int>(events.size()), wait_ms);
        if (ready < 0 && errno != EINTR) {
            std::perror("curl-client: epoll_wait");
            break;
        }
        for (int i = 0; i < ready; ++i) {
            const uint32_t e = events[static_cast<size_t>(i)].events;
            const int flags = ((e & EPOLLIN) ? CURL_CSELECT_IN : 0) | ((e & EPOLLOUT) ? CURL_CSELECT_OUT : 0) |
                              ((e & (EPOLLERR | EPOLLHUP)) ? CURL_CSELECT_ERR : 0);
            curl_multi_socket_action(multi, events[static_cast<size_t>(i)].data.fd, flags, &running);
        }
        collect();
    }
    const auto end = clock_type::now();

    for (slot& s : slots) {
        curl_multi_remove_handle(multi, s.easy);
        curl_easy_cleanup(s.easy);
    }
    curl_multi_cleanup(multi);
    curl_share_cleanup(share);
    curl_slist_free_all(headers);
    close(loop.epoll_fd);
    curl_global_cleanup();

    failed += n - ok - failed;  // requests never completed (a loop error) count as failed
    return report(ok, failed, end - start, latencies, body_bytes);
}
