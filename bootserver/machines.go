package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/pxejoin/pxejoin/bootserver/httpd"
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
	fmt.Fprintln(tw, "MAC\tNODE\tPROFILE\tBOOT\tLAST PHASE\tSTATE\tAGO\tERROR")
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
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\n", m.MAC, m.NodeName, profile, m.Boot, last, state, ago, errText)
	}
	tw.Flush()
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}
