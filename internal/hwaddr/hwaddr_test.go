package hwaddr

import (
	"encoding/json"
	"net"
	"testing"
)

func TestParse(t *testing.T) {
	want := MAC{0x52, 0x54, 0x00, 0xab, 0xcd, 0xef}
	for _, tc := range []struct {
		in   string
		ok   bool
		want MAC
	}{
		{"52:54:00:ab:cd:ef", true, want},
		{"52:54:00:AB:CD:EF", true, want},
		{"52-54-00-ab-cd-ef", true, want},
		{"5254.00ab.cdef", true, want},
		{"", false, MAC{}},
		{"52:54:00:ab:cd", false, MAC{}},
		{"00:00:00:00:fe:80:00:00:00:00:00:00:02:00:5e:10:00:00:00:01", false, MAC{}}, // 20-byte IPoIB
		{"52:54:00:ab:cd:zz", false, MAC{}},
	} {
		got, err := Parse(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("Parse(%q) = %v, %v; want %v, ok %v", tc.in, got, err, tc.want, tc.ok)
		}
	}
}

func TestForms(t *testing.T) {
	m := MAC{0x52, 0x54, 0x00, 0xab, 0xcd, 0xef}
	if s := m.String(); s != "52:54:00:ab:cd:ef" {
		t.Errorf("String = %q", s)
	}
	if s := m.Hex(); s != "525400abcdef" {
		t.Errorf("Hex = %q", s)
	}
	if got, ok := FromHardwareAddr(m.HardwareAddr()); !ok || got != m {
		t.Errorf("FromHardwareAddr(HardwareAddr) = %v, %v", got, ok)
	}
	if _, ok := FromHardwareAddr(net.HardwareAddr{1, 2, 3}); ok {
		t.Error("FromHardwareAddr took a 3-byte address")
	}
	if !(MAC{}).IsZero() || m.IsZero() {
		t.Error("IsZero")
	}
	b, err := json.Marshal(map[string]MAC{"mac": m})
	if err != nil || string(b) != `{"mac":"52:54:00:ab:cd:ef"}` {
		t.Fatalf("json = %s, %v", b, err)
	}
	var back map[string]MAC
	if err := json.Unmarshal(b, &back); err != nil || back["mac"] != m {
		t.Fatalf("json back = %v, %v", back, err)
	}
	if err := json.Unmarshal([]byte(`{"mac":"nope"}`), &back); err == nil {
		t.Error("json took a bad MAC")
	}
}

func FuzzParse(f *testing.F) {
	f.Add("52:54:00:ab:cd:ef")
	f.Add("5254.00ab.cdef")
	f.Fuzz(func(t *testing.T, s string) {
		m, err := Parse(s)
		if err != nil {
			return
		}
		again, err := Parse(m.String())
		if err != nil || again != m {
			t.Fatalf("Parse(%q) = %v does not round-trip: %v, %v", s, m, again, err)
		}
	})
}
