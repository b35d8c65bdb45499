package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	neturl "net/url"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/pxejoin/pxejoin/bootserver/httpd"
	"github.com/pxejoin/pxejoin/bootserver/status"
)

// machinesCmd prints the running server's machines and their last phase, from GET /machines.
func machinesCmd(args []string, out io.Writer) int {
	fs := flag.NewFlagSet("bootserver machines", flag.ContinueOnError)
	url := fs.String("server", envOr("PXEJOIN_SERVER", "http://127.0.0.1:8080"), "the boot server's URL")
	if err := fs.Parse(args); err != nil {
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
	printMachines(out, mr, time.Now())
	return 0
}

func printMachines(out io.Writer, mr httpd.MachinesResponse, now time.Time) {
	tw := tabwriter.NewWriter(out, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "MAC\tNODE\tPROFILE\tBOOT\tLAST PHASE\tSTATE\tAGO\tDISK\tERROR")
	for _, m := range mr.Machines {
		ago := ""
		if !m.LastSeen.IsZero() {
			ago = now.Sub(m.LastSeen).Round(time.Second).String()
		}
		last, state := m.LastPhase, m.LastState
		if last == "" {
			last, state = "-", "-"
		}
		errText := ""
		for _, p := range m.Phases {
			if p.Phase == m.LastPhase {
				errText = p.Error
			}
		}
		if len(errText) > 60 {
			errText = errText[:57] + "..."
		}
		profile := m.Profile
		if !m.Known && profile != "" {
			profile += " (unlisted)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\n", m.MAC, m.NodeName, profile, m.Boot, last, state, ago, disk(m.Install, now), errText)
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
