// go-client: the Go benchmark client for bench/run (net/http + golang.org/x/oauth2).
//
// What a competent Go user would write to call the Confluence API with OAuth 2.0:
// one http.Client whose *http.Transport trusts the bench CA and keeps a keep-alive
// pool of at least C connections, wrapped by oauth2.NewClient so that every request
// carries "Authorization: Bearer <token>".
//
//	go-client load  --url URL --token TOKEN --ca CA_PEM --requests N --concurrency C
//	go-client storm --grant GRANT_JSON --ca CA_PEM --requests R
//
// In load mode, N GETs use a static token (oauth2.StaticTokenSource), C goroutines
// taking request numbers from a shared atomic counter. In storm mode, an already
// expired token and a refresh token go into an oauth2.Config token source (a
// ReuseTokenSource); R GETs start at once and the token source refreshes the token
// for them; a counting RoundTripper on the token client counts the token requests.
//
// Prints one JSON line on stdout; diagnostics on stderr. Exit 0 iff no request failed,
// 1 otherwise, 2 on bad arguments.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/oauth2"
)

func usage() {
	fmt.Fprintln(os.Stderr, "usage: go-client load --url URL --token TOKEN --ca CA_PEM --requests N --concurrency C")
	fmt.Fprintln(os.Stderr, "       go-client storm --grant GRANT_JSON --ca CA_PEM --requests R")
	os.Exit(2)
}

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	switch os.Args[1] {
	case "load":
		os.Exit(load(os.Args[2:]))
	case "storm":
		os.Exit(storm(os.Args[2:]))
	default:
		usage()
	}
}

// transport returns the keep-alive transport verifying peers against the CA in caFile.
func transport(caFile string, pool int) (*http.Transport, error) {
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, err
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s: no certificate found", caFile)
	}
	return &http.Transport{
		TLSClientConfig:     &tls.Config{RootCAs: roots},
		MaxIdleConns:        pool,
		MaxIdleConnsPerHost: pool,
		// Without a cap, a request that finds no idle connection dials a new one even
		// when a busy one is about to be returned: under a burst of C requests the
		// pool grows past C and the extra handshakes are wasted.
		MaxConnsPerHost:   pool,
		ForceAttemptHTTP2: false, // the server speaks HTTP/1.1
		IdleConnTimeout:   90 * time.Second,
	}, nil
}

// errorLog prints the first few distinct errors to stderr.
type errorLog struct {
	mu   sync.Mutex
	seen map[string]bool
}

func (l *errorLog) report(msg string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.seen == nil {
		l.seen = map[string]bool{}
	}
	if len(l.seen) < 5 && !l.seen[msg] {
		l.seen[msg] = true
		fmt.Fprintln(os.Stderr, "error:", msg)
	}
}

// get sends one GET and reads the whole body; it succeeds iff 200 with a non-empty body.
func get(client *http.Client, url string) (int, error) {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return 0, err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return len(body), err
	}
	if resp.StatusCode != http.StatusOK {
		return len(body), fmt.Errorf("status %s", resp.Status)
	}
	if len(body) == 0 {
		return 0, errors.New("empty body")
	}
	return len(body), nil
}

func load(args []string) int {
	fs := flag.NewFlagSet("load", flag.ContinueOnError)
	url := fs.String("url", "", "API URL")
	token := fs.String("token", "", "access token")
	ca := fs.String("ca", "", "CA certificate (PEM)")
	n := fs.Int("requests", 0, "number of requests")
	c := fs.Int("concurrency", 0, "requests in flight")
	if fs.Parse(args) != nil || fs.NArg() != 0 || *url == "" || *token == "" || *ca == "" || *n <= 0 || *c <= 0 {
		usage()
	}

	tr, err := transport(*ca, *c)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	ctx := context.WithValue(context.Background(), oauth2.HTTPClient, &http.Client{Transport: tr})
	client := oauth2.NewClient(ctx, oauth2.StaticTokenSource(&oauth2.Token{AccessToken: *token}))

	latencies := make([]time.Duration, *n)
	var next, ok, failed, bodyBytes atomic.Int64
	var errs errorLog
	var wg sync.WaitGroup
	start := time.Now()
	for range *c {
		wg.Go(func() {
			for {
				i := next.Add(1) - 1
				if i >= int64(*n) {
					return
				}
				t0 := time.Now()
				size, err := get(client, *url)
				latencies[i] = time.Since(t0)
				bodyBytes.Add(int64(size))
				if err != nil {
					failed.Add(1)
					errs.report(err.Error())
				} else {
					ok.Add(1)
				}
			}
		})
	}
	wg.Wait()
	seconds := time.Since(start).Seconds()

	slices.Sort(latencies)
	fmt.Printf("{\"ok\":%d,\"failed\":%d,\"seconds\":%.3f,\"p50_ms\":%.3f,\"p99_ms\":%.3f,\"body_bytes\":%d}\n",
		ok.Load(), failed.Load(), seconds, percentileMs(latencies, 50), percentileMs(latencies, 99), bodyBytes.Load())
	if failed.Load() != 0 {
		return 1
	}
	return 0
}

// percentileMs is the nearest-rank percentile p of sorted, in milliseconds.
func percentileMs(sorted []time.Duration, p float64) float64 {
	rank := int(math.Ceil(p / 100 * float64(len(sorted))))
	return float64(sorted[max(rank, 1)-1]) / float64(time.Millisecond)
}

// countingTransport counts the requests it sends (here: token requests).
type countingTransport struct {
	base  http.RoundTripper
	count atomic.Int64
}

func (t *countingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	t.count.Add(1)
	return t.base.RoundTrip(req)
}

type grant struct {
	TokenURL     string `json:"token_url"`
	APIURL       string `json:"api_url"`
	ClientID     string `json:"client_id"`
	ClientSecret string `json:"client_secret"`
	AccessToken  string `json:"access_token"`
	RefreshToken string `json:"refresh_token"`
}

func storm(args []string) int {
	fs := flag.NewFlagSet("storm", flag.ContinueOnError)
	grantFile := fs.String("grant", "", "grant (JSON)")
	ca := fs.String("ca", "", "CA certificate (PEM)")
	r := fs.Int("requests", 0, "number of concurrent requests")
	if fs.Parse(args) != nil || fs.NArg() != 0 || *grantFile == "" || *ca == "" || *r <= 0 {
		usage()
	}

	var g grant
	data, err := os.ReadFile(*grantFile)
	if err == nil {
		err = json.Unmarshal(data, &g)
	}
	if err == nil && (g.TokenURL == "" || g.APIURL == "" || g.RefreshToken == "") {
		err = errors.New("token_url, api_url and refresh_token are required")
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", *grantFile, err)
		return 2
	}
	tr, err := transport(*ca, *r)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}

	// Token requests go through a counting wrapper; API requests share the same pool.
	tokenTransport := &countingTransport{base: tr}
	tokenCtx := context.WithValue(context.Background(), oauth2.HTTPClient, &http.Client{Transport: tokenTransport})
	apiCtx := context.WithValue(context.Background(), oauth2.HTTPClient, &http.Client{Transport: tr})

	cfg := oauth2.Config{
		ClientID:     g.ClientID,
		ClientSecret: g.ClientSecret,
		Endpoint:     oauth2.Endpoint{TokenURL: g.TokenURL, AuthStyle: oauth2.AuthStyleInParams},
	}
	ts := cfg.TokenSource(tokenCtx, &oauth2.Token{
		AccessToken:  g.AccessToken,
		RefreshToken: g.RefreshToken,
		TokenType:    "Bearer",
		Expiry:       time.Now().Add(-time.Minute), // already expired
	})
	client := oauth2.NewClient(apiCtx, ts)

	var ok, failed atomic.Int64
	var errs errorLog
	var wg sync.WaitGroup
	gate := make(chan struct{})
	for range *r {
		wg.Go(func() {
			<-gate
			if _, err := get(client, g.APIURL); err != nil {
				failed.Add(1)
				errs.report(err.Error())
			} else {
				ok.Add(1)
			}
		})
	}
	start := time.Now()
	close(gate) // all R at once
	wg.Wait()
	seconds := time.Since(start).Seconds()

	fmt.Printf("{\"ok\":%d,\"failed\":%d,\"seconds\":%.3f,\"refreshes\":%d}\n",
		ok.Load(), failed.Load(), seconds, tokenTransport.count.Load())
	if failed.Load() != 0 {
		return 1
	}
	return 0
}
