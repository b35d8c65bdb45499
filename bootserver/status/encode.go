package status

import (
	"encoding/json"
	"math"
	"strconv"
	"time"
)

// marshalMachine is json.Marshal(m), byte for byte, without reflection: the background writer
// encodes every timeline that changed, up to one per request. Whatever the fast encoder does not
// handle exactly as encoding/json (strings needing escapes, times outside RFC 3339, odd floats) is
// handed to encoding/json.
func marshalMachine(b []byte, m *Machine) ([]byte, error) {
	n0 := len(b)
	b, ok := appendMachine(b, m)
	if ok {
		return b, nil
	}
	j, err := json.Marshal(m)
	return append(b[:n0], j...), err
}

func appendMachine(b []byte, m *Machine) ([]byte, bool) {
	ok := true
	str := func(b []byte, key, s string, omitEmpty bool) []byte {
		if omitEmpty && s == "" {
			return b
		}
		b = append(b, key...)
		var good bool
		b, good = appendPlainString(b, s)
		ok = ok && good
		return b
	}
	tm := func(b []byte, key string, t time.Time) []byte {
		if t.IsZero() { // omitzero
			return b
		}
		b = append(b, key...)
		var good bool
		b, good = appendTime(b, t)
		ok = ok && good
		return b
	}
	b = str(b, `{"mac":`, m.MAC, false)
	b = str(b, `,"nodeName":`, m.NodeName, true)
	b = str(b, `,"profile":`, m.Profile, true)
	b = append(b, `,"known":`...)
	b = strconv.AppendBool(b, m.Known)
	b = append(b, `,"boot":`...)
	b = strconv.AppendInt(b, int64(m.Boot), 10)
	b = tm(b, `,"bootStarted":`, m.BootStarted)
	b = str(b, `,"lastPhase":`, m.LastPhase, true)
	b = str(b, `,"lastState":`, m.LastState, true)
	b = tm(b, `,"lastSeen":`, m.LastSeen)
	b = append(b, `,"phases":`...)
	if m.Phases == nil {
		b = append(b, "null"...)
	} else {
		b = append(b, '[')
		for i := range m.Phases {
			p := &m.Phases[i]
			if i > 0 {
				b = append(b, ',')
			}
			b = str(b, `{"phase":`, p.Phase, false)
			b = str(b, `,"state":`, p.State, false)
			b = str(b, `,"source":`, p.Source, false)
			b = tm(b, `,"start":`, p.Start)
			b = tm(b, `,"end":`, p.End)
			if p.Seconds != 0 {
				b = append(b, `,"seconds":`...)
				var good bool
				b, good = appendFloat(b, p.Seconds)
				ok = ok && good
			}
			b = str(b, `,"detail":`, p.Detail, true)
			b = str(b, `,"error":`, p.Error, true)
			if p.Attempt != 0 {
				b = append(b, `,"attempt":`...)
				b = strconv.AppendInt(b, int64(p.Attempt), 10)
			}
			b = append(b, '}')
		}
		b = append(b, ']')
	}
	return append(b, '}'), ok
}

// appendPlainString quotes s if it has only printable ASCII that encoding/json leaves as is (it
// escapes <, > and & for HTML); false otherwise.
func appendPlainString(b []byte, s string) ([]byte, bool) {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c > 0x7e || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			return b, false
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"'), true
}

// appendTime is time.Time's MarshalJSON for the times it accepts (a 4-digit year, an offset under
// a day: the checks MarshalJSON makes on the same text); false for the others.
func appendTime(b []byte, t time.Time) ([]byte, bool) {
	n := len(b)
	b = append(b, '"')
	b = t.AppendFormat(b, time.RFC3339Nano)
	s := b[n+1:]
	if len(s) < len("2006-01-02T15:04:05Z") || s[4] != '-' {
		return b[:n], false
	}
	if s[len(s)-1] != 'Z' {
		c, h := s[len(s)-6], s[len(s)-5:]
		if '0' <= c && c <= '9' || 10*(h[0]-'0')+(h[1]-'0') >= 24 {
			return b[:n], false
		}
	}
	return append(b, '"'), true
}

// appendFloat is encoding/json's float64 encoding of a finite f; false for NaN and infinities.
func appendFloat(b []byte, f float64) ([]byte, bool) {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return b, false
	}
	format := byte('f')
	if abs := math.Abs(f); abs != 0 && (abs < 1e-6 || abs >= 1e21) {
		format = 'e'
	}
	b = strconv.AppendFloat(b, f, format, -1, 64)
	if format == 'e' { // e-09 → e-9, as encoding/json writes it
		if n := len(b); n >= 4 && b[n-4] == 'e' && b[n-3] == '-' && b[n-2] == '0' {
			b[n-2] = b[n-1]
			b = b[:n-1]
		}
	}
	return b, true
}
