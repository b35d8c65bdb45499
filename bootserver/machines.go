package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	neturl "net/url"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/pxejoin/pxejoin/bootserver/httpd"
	"github.com/pxejoin/pxejoin/bootserver/status"
)

// machinesCmd prints the running server's machines and their last phase, from GET /machines,
// failures first; given a MAC or node name, that machine's boot with every attempt of each phase.
func machinesCmd(args []string, out io.Writer) int {
	fs := flag.NewFlagSet("bootserver machines", flag.ContinueOnError)
	url := fs.String("server", envOr("PXEJOIN_SERVER", "http://127.0.0.1:8080"), "the boot server's URL")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: bootserver machines [--server URL] [mac|node]")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil || fs.NArg() > 1 {
		return 2
	}
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get(strings.TrimSuffix(*url, "/") + "/machines")
	if err != nil {
		fmt.Fprintln(os.Stderr, "bootserver machines:", err)
		return 1
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		fmt.Fprintln(os.Stderr, "bootserver machines:", resp.Status)
		return 1
	}
	var mr httpd.MachinesResponse
	if err := json.NewDecoder(resp.Body).Decode(&mr); err != nil {
		fmt.Fprintln(os.Stderr, "bootserver machines: bad answer:", err)
		return 1
	}
	status.SortFailuresFirst(mr.Machines) // as the server does; an older one sorted by MAC
	if name := fs.Arg(0); name != "" {
		for i := range mr.Machines {
			if m := &mr.Machines[i]; m.MAC.String() == strings.ToLower(name) || m.NodeName == name {
				printAttempts(out, m)
				return 0
			}
		}
		fmt.Fprintf(os.Stderr, "bootserver machines: no machine %q: give a MAC or node name from bootserver machines\n", name)
		return 1
	}
	printMachines(out, mr, time.Now())
	return 0
}

func printMachines(out io.Writer, mr httpd.MachinesResponse, now time.Time) {
	tw := tabwriter.NewWriter(out, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "MAC\tNODE\tPROFILE\tBOOT\tLAST PHASE\tSTATE\tAGO\tFAILED\tDISK\tLAST ERROR")
	for _, m := range mr.Machines {
		ago := ""
		if !m.LastSeen.IsZero() {
			ago = now.Sub(m.LastSeen).Round(time.Second).String()
		}
		last, state := m.LastPhase, m.LastState
		if last == "" {
			last, state = "-", "-"
		}
		errText, failed := m.Reason(), "-"
		if n := m.Failures(); n > 0 {
			failed = strconv.Itoa(n)
		}
		if len(errText) > 60 {
			errText = errText[:57] + "..."
		}
		profile := m.Profile
		if !m.Known && profile != "" {
			profile += " (unlisted)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\n", m.MAC, m.NodeName, profile, m.Boot, last, state, ago, failed, disk(m.Install, now), errText)
	}
	tw.Flush()
}

// printAttempts prints m's current boot: every attempt of each phase, with its error.
func printAttempts(out io.Writer, m *status.Machine) {
	fmt.Fprintf(out, "%s %s boot %d, %d failed attempts\n", m.MAC, m.NodeName, m.Boot, m.Failures())
	tw := tabwriter.NewWriter(out, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "PHASE\tATTEMPT\tSTATE\tSTART\tSECONDS\tERROR / DETAIL")
	line := func(p *status.Phase, a status.Attempt, text string) {
		n := "-"
		if a.Attempt > 0 {
			n = strconv.Itoa(a.Attempt)
		}
		at := a.Start
		if at.IsZero() { // an event without a duration (agent-start, node-ready): when it happened
			at = a.End
		}
		start := "-"
		if !at.IsZero() && !m.BootStarted.IsZero() {
			start = "+" + at.Sub(m.BootStarted).Round(time.Millisecond).String()
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%.3f\t%s\n", p.Phase, n, a.State, start, a.Seconds, text)
	}
	for i := range m.Phases {
		p := &m.Phases[i]
		for _, a := range p.Attempts {
			line(p, a, a.Error)
		}
		text := p.Error
		if text == "" {
			text = p.Detail
		}
		line(p, status.Attempt{Attempt: p.Attempt, State: p.State, Start: p.Start, End: p.End, Seconds: p.Seconds}, text)
	}
	tw.Flush()
}

// disk is the DISK column: "-" for a diskless machine; else installed, when it last resumed and
// why it last joined again, and a pending re-image.
func disk(in status.Install, now time.Time) string {
	if !in.Installed && in.Reimage == "" {
		return "-"
	}
	var parts []string
	if in.Installed {
		parts = append(parts, "installed")
	}
	if !in.LastResume.IsZero() {
		parts = append(parts, "resumed "+now.Sub(in.LastResume).Round(time.Second).String()+" ago")
	}
	if in.Rejoins > 0 {
		parts = append(parts, fmt.Sprintf("re-joined %dx (%s)", in.Rejoins, in.RejoinReason))
	}
	if in.Reimage != "" {
		parts = append(parts, "reimage pending")
	}
	return strings.Join(parts, ", ")
}

// reimageCmd asks the running server to re-image a machine at its next boot:
// POST /machines/<mac|node>/reimage.
func reimageCmd(args []string, out, errOut io.Writer) int {
	fs := flag.NewFlagSet("bootserver reimage", flag.ContinueOnError)
	fs.SetOutput(errOut)
	url := fs.String("server", envOr("PXEJOIN_SERVER", "http://127.0.0.1:8080"), "the boot server's URL (on its own host: it refuses other clients)")
	fs.Usage = func() {
		fmt.Fprintln(errOut, "usage: bootserver reimage [--server URL] <mac|node>\n\nThe machine's next boot wipes its persistent disk and joins afresh.")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return 2
	}
	c := &http.Client{Timeout: 40 * time.Second}
	resp, err := c.Post(strings.TrimSuffix(*url, "/")+"/machines/"+neturl.PathEscape(fs.Arg(0))+"/reimage", "", nil)
	if err != nil {
		fmt.Fprintln(errOut, "bootserver reimage:", err)
		return 1
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		fmt.Fprintf(errOut, "bootserver reimage: %s: %s\n", resp.Status, strings.TrimSpace(string(msg)))
		return 1
	}
	var rr httpd.ReimageResponse
	if err := json.NewDecoder(resp.Body).Decode(&rr); err != nil {
		fmt.Fprintln(errOut, "bootserver reimage: bad answer:", err)
		return 1
	}
	fmt.Fprintf(out, "machine %s (node %s, profile %s): its next boot wipes its disk and joins afresh (request %s)\n", rr.MAC, rr.NodeName, rr.Profile, rr.Request)
	return 0
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}
