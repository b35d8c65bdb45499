package bootstatus

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

// Client sends one machine's events to its status URL (…/status/<mac>), in POSTs within the limits.
// A batch the server refuses with a 4xx is dropped, not retried (it would be refused again); the next
// POST starts with a PhaseStatusDropped event that says how many events were lost and why. A Client
// is not safe for concurrent use.
type Client struct {
	URL string
	// Mirrors are the same status path on the other boot servers. A POST that the current server
	// (at first URL's) does not answer (no connection, a timeout) or answers with a 5xx goes to the
	// next, in turn; the one that answers stays current for the POSTs that follow, so a dead
	// server costs one failed POST, not one per report.
	Mirrors []string
	// HTTP is the client used; nil means http.DefaultClient.
	HTTP *http.Client
	// Now is the clock of the status-dropped events; nil means time.Now.
	Now func() time.Time

	dropped int    // events dropped since the last status-dropped report went through
	reason  string // why the last of them were dropped
	cur     int    // the current server: 0 is URL, i is Mirrors[i-1]
}

// Drop counts n events the caller dropped itself (e.g. from a full queue) for the next
// status-dropped report; reason says why.
func (c *Client) Drop(n int, reason string) {
	if n > 0 {
		c.dropped += n
		c.reason = reason
	}
}

// Send posts evs in order, in as many POSTs as the limits need. It returns how many of evs are done
// with: delivered, or dropped because the server refused them. After an error (the network, a 5xx,
// 408 or 429), evs[n:] are still to be sent.
func (c *Client) Send(ctx context.Context, evs []Event) (n int, err error) {
	for n < len(evs) || c.dropped > 0 {
		var head []Event
		if c.dropped > 0 {
			head = append(head, c.droppedEvent())
		}
		body, k, err := chunk(head, evs[n:])
		if err != nil {
			return n, err
		}
		code, msg, err := c.post(ctx, body)
		switch {
		case err != nil:
			return n, err
		case code/100 == 2:
			c.dropped, c.reason = 0, ""
		case code/100 == 4 && code != http.StatusRequestTimeout && code != http.StatusTooManyRequests:
			if k == 0 { // the server refuses even the report of the drop: give up on it
				c.dropped, c.reason = 0, ""
				return n, fmt.Errorf("the boot server refused the report of dropped status events: %d %s", code, msg)
			}
			c.Drop(k, fmt.Sprintf("the boot server refused them: %d %s", code, msg))
		default:
			return n, fmt.Errorf("the boot server answered %d %s to the status report", code, msg)
		}
		n += k
	}
	return n, nil
}

func (c *Client) droppedEvent() Event {
	now := time.Now
	if c.Now != nil {
		now = c.Now
	}
	return Event{Phase: PhaseStatusDropped, State: StateError, Time: now(),
		Detail: fmt.Sprintf("%d events", c.dropped),
		Error:  Truncate(fmt.Sprintf("%d status events were dropped; the last because %s", c.dropped, c.reason), MaxError)}
}

// chunk encodes head and as many of evs as fit the limits (at least one) as a JSON array; k is how
// many of evs it holds.
func chunk(head, evs []Event) (body []byte, k int, err error) {
	body = append(body, '[')
	count := 0
	add := func(e *Event) (bool, error) {
		js, err := json.Marshal(e)
		if err != nil {
			return false, err
		}
		if count > 0 && (count == MaxEvents || len(body)+1+len(js)+1 > MaxBody) {
			return false, nil
		}
		if count > 0 {
			body = append(body, ',')
		}
		body = append(body, js...)
		count++
		return true, nil
	}
	for i := range head {
		if _, err := add(&head[i]); err != nil {
			return nil, 0, err
		}
	}
	for k < len(evs) {
		ok, err := add(&evs[k])
		if err != nil {
			return nil, 0, err
		}
		if !ok {
			break
		}
		k++
	}
	return append(body, ']'), k, nil
}

// post sends one body to the current server, or, when that one does not answer or answers a 5xx,
// to the next ones in turn; it returns the status code and the first line of the last answer. When
// ctx ends on one server the next is not tried, but it is the current one for the next POST: a
// server that holds connections open without answering costs one POST's time.
func (c *Client) post(ctx context.Context, body []byte) (code int, msg string, err error) {
	urls := append([]string{c.URL}, c.Mirrors...)
	for range urls {
		code, msg, err = c.postTo(ctx, urls[c.cur%len(urls)], body)
		if err == nil && code/100 != 5 {
			return code, msg, nil
		}
		c.cur = (c.cur + 1) % len(urls)
		if ctx.Err() != nil {
			break
		}
	}
	return code, msg, err
}

// postTo sends one body to url; it returns the status code and the first line of the server's answer.
func (c *Client) postTo(ctx context.Context, url string, body []byte) (int, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return 0, "", err
	}
	req.Header.Set("Content-Type", "application/json")
	hc := c.HTTP
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	msg, _, _ := strings.Cut(strings.TrimSpace(string(b)), "\n")
	if msg == "" {
		msg = http.StatusText(resp.StatusCode)
	}
	return resp.StatusCode, msg, nil
}
