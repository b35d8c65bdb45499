package initmode

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"
)

// IdleTimeout is how long a download from a boot server may go without a byte, from the request to
// the answer's header and then between reads of its body, before the agent gives that server up and
// asks the next of pxejoin.servers=. A server that is stopped (SIGSTOP), hung or cut off leaves its
// connection open: without a bound the read waited for TCP keepalive (forever for a stopped
// process, whose kernel still answers the probes) or for the phase's timeout (15 minutes for the
// root image), after which the phase started again at the same server.
//
// 40 s is longer than the boot server's own longest silence before it answers (minting a join
// file's token against a slow API: 30 s, then a 503), so that a slow API is not taken for a dead
// server, and shorter than the join-file phase's minute, so that the next server is asked within
// the phase. Inside a body, a live server on the machine's own link does not go 40 s without a
// byte, however many machines it serves.
const IdleTimeout = 40 * time.Second

// errStalled is why a request is cancelled when its server sent nothing for the idle limit.
var errStalled = errors.New("the boot server stalled")

// get fetches a small document (at most limit bytes).
func (a *Agent) get(ctx context.Context, url string, limit int64) (body []byte, err error) {
	err = a.fetch(ctx, url, nil, func(resp *http.Response) error {
		if err := checkOK(url, resp); err != nil {
			return err
		}
		body, err = io.ReadAll(io.LimitReader(resp.Body, limit))
		return err
	})
	return body, err
}

// download writes url to path and returns its size. A download that breaks off on one server
// starts again from the start on the next: the lab's 260 MB root image takes about 2 s on a 1 Gb/s
// link, less than a Range request would save once it checked (If-Range) that the next server
// holds the same file.
func (a *Agent) download(ctx context.Context, url, path string) (n int64, err error) {
	err = a.fetch(ctx, url, nil, func(resp *http.Response) error {
		if err := checkOK(url, resp); err != nil {
			return err
		}
		f, err := os.Create(path)
		if err != nil {
			return err
		}
		n, err = io.Copy(f, resp.Body)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		return err
	})
	return n, err
}

// fetch GETs url with header and hands the answer to use, which reads the body. When url's boot
// server does not answer (it died), or breaks off before the body is whole (it died, or sent nothing
// for the idle limit: stopped, hung, cut off), the same path is asked of the other boot servers
// (pxejoin.servers=) in turn, and use is called again with the new answer. The server that answered
// is asked first from then on, so that a stalled one costs the idle limit once, not per download.
// An answer, even an error status, is final: a join file refused by one server is not asked of the
// next.
func (a *Agent) fetch(ctx context.Context, url string, header http.Header, use func(*http.Response) error) error {
	urls := a.Cmdline.Mirrors(url)
	var errs []error
	for i := range urls {
		k := (a.server + i) % len(urls)
		failed, err := a.fetchOne(ctx, urls[k], header, use)
		if !failed || ctx.Err() != nil {
			if !failed && len(urls) > 1 {
				a.server = k
			}
			return err
		}
		if i+1 < len(urls) && a.Logf != nil {
			a.Logf("%v; asking the next boot server, %s", err, urls[(k+1)%len(urls)])
		}
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// fetchOne is fetch from one server; failed says the server did not answer, or broke off.
func (a *Agent) fetchOne(ctx context.Context, url string, header http.Header, use func(*http.Response) error) (failed bool, err error) {
	idle := a.Idle
	if idle <= 0 {
		idle = IdleTimeout
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	timer := time.AfterFunc(idle, func() { cancel(errStalled) })
	defer timer.Stop()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return false, err
	}
	for k, v := range header {
		req.Header[k] = v
	}
	hc := a.HTTP
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		if context.Cause(ctx) == errStalled {
			err = fmt.Errorf("GET %s: no answer for %s: %w", url, idle, errStalled)
		}
		return true, err
	}
	body := &idleBody{ReadCloser: resp.Body, timer: timer, idle: idle}
	resp.Body = body
	defer body.Close()
	err = use(resp)
	switch {
	case body.err == nil:
		return false, err
	case context.Cause(ctx) == errStalled:
		return true, fmt.Errorf("GET %s: no byte for %s after %d bytes: %w", url, idle, body.n, errStalled)
	default:
		return true, fmt.Errorf("GET %s: broken off after %d bytes: %w", url, body.n, body.err)
	}
}

// idleBody is an answer's body whose every byte re-arms the idle timer (which cancels the request),
// and which keeps the first read error: the server's fault, not the caller's.
type idleBody struct {
	io.ReadCloser
	timer *time.Timer
	idle  time.Duration
	n     int64
	err   error
}

func (b *idleBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n += int64(n)
	if n > 0 {
		b.timer.Reset(b.idle)
	}
	switch {
	case err == io.EOF:
		b.timer.Stop()
	case err != nil && b.err == nil:
		b.err = err
	}
	return n, err
}

// checkOK turns an answer other than 200 into an error that quotes the server.
func checkOK(url string, resp *http.Response) error {
	if resp.StatusCode == http.StatusOK {
		return nil
	}
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	err := fmt.Errorf("GET %s: %s: %s", url, resp.Status, strings.TrimSpace(string(msg)))
	if wait, ok := retryAfter(resp); ok {
		return &RetryAfterError{Wait: wait, Err: err}
	}
	return err
}

// MaxRetryAfter bounds the wait a server's Retry-After may ask for: a wrong or hostile header
// cannot park the machine for longer.
const MaxRetryAfter = time.Minute

// RetryAfterError is a 503 or 429 answer with a Retry-After header: the phase is retried after Wait
// instead of the agent's backoff.
type RetryAfterError struct {
	Wait time.Duration
	Err  error
}

func (e *RetryAfterError) Error() string { return e.Err.Error() }
func (e *RetryAfterError) Unwrap() error { return e.Err }

// retryAfter reads a 503 or 429's Retry-After in seconds (RFC 9110 10.2.3), capped at
// MaxRetryAfter. The HTTP-date form is ignored (the backoff applies): before its join, the
// machine's clock is not to be trusted.
func retryAfter(resp *http.Response) (time.Duration, bool) {
	if resp.StatusCode != http.StatusServiceUnavailable && resp.StatusCode != http.StatusTooManyRequests {
		return 0, false
	}
	s, err := strconv.Atoi(strings.TrimSpace(resp.Header.Get("Retry-After")))
	if err != nil || s < 0 {
		return 0, false
	}
	return min(time.Duration(s)*time.Second, MaxRetryAfter), true
}
