package config

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/pxejoin/pxejoin/internal/hwaddr"
)

// Load reads and validates a configuration file.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("cannot read the configuration: %w", err)
	}
	return Parse(path, data)
}

// Parse decodes data (named file in errors) strictly and validates it. The error, if any, is an
// errors.Join of *Error values, each with a line number.
func Parse(file string, data []byte) (*Config, error) {
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, yamlError(file, err)
	}
	if len(root.Content) == 0 {
		return nil, &Error{File: file, Msg: "the file is empty"}
	}
	if err := checkMACs(file, root.Content[0]); err != nil {
		return nil, err
	}
	c := &Config{}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(c); err != nil {
		return nil, yamlError(file, err)
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		return nil, &Error{File: file, Line: extra.Line, Msg: "a second YAML document: keep the configuration in one"}
	}
	loc := func(path []any) (int, string) {
		return nodeAt(root.Content[0], path).Line, pathString(path)
	}
	if err := c.validate(file, loc); err != nil {
		return nil, err
	}
	return c, nil
}

// checkMACs parses the machines' mac fields ahead of decoding, which would stop at the first bad
// one without its line.
func checkMACs(file string, doc *yaml.Node) error {
	var errs []error
	var machines []*yaml.Node
	for i := 0; doc.Kind == yaml.MappingNode && i+1 < len(doc.Content); i += 2 {
		if doc.Content[i].Value == "machines" && doc.Content[i+1].Kind == yaml.SequenceNode {
			machines = doc.Content[i+1].Content
		}
	}
	for i, m := range machines {
		for j := 0; m.Kind == yaml.MappingNode && j+1 < len(m.Content); j += 2 {
			if v := m.Content[j+1]; m.Content[j].Value == "mac" && v.Kind == yaml.ScalarNode {
				if _, err := hwaddr.Parse(v.Value); err != nil {
					errs = append(errs, &Error{File: file, Line: v.Line, Field: pathString([]any{"machines", i, "mac"}), Msg: err.Error()})
				}
			}
		}
	}
	return errors.Join(errs...)
}

var lineRE = regexp.MustCompile(`^(?:yaml: )?line (\d+): (.*)$`)

// yamlError turns go.yaml.in/yaml errors ("line 3: field x not found in type config.Machine")
// into *Error values.
func yamlError(file string, err error) error {
	var msgs []string
	var te *yaml.TypeError
	if errors.As(err, &te) {
		msgs = te.Errors
	} else {
		msgs = []string{err.Error()}
	}
	var errs []error
	for _, m := range msgs {
		e := &Error{File: file, Msg: m}
		if g := lineRE.FindStringSubmatch(m); g != nil {
			e.Line, _ = strconv.Atoi(g[1])
			e.Msg = g[2]
		}
		e.Msg = strings.TrimPrefix(e.Msg, "yaml: ")
		if f, typ, ok := strings.Cut(e.Msg, " not found in type "); ok {
			e.Msg = fmt.Sprintf("unknown %s in %s", f, typeNames[typ])
			if typeNames[typ] == "" {
				e.Msg = fmt.Sprintf("unknown %s", f)
			}
		}
		errs = append(errs, e)
	}
	return errors.Join(errs...)
}

var typeNames = map[string]string{
	"config.Config":  "the top level",
	"config.Listen":  "listen",
	"config.DHCP":    "dhcp",
	"config.Pool":    "dhcp.pool",
	"config.TFTP":    "tftp",
	"config.Cluster": "cluster",
	"config.Unknown": "unknownMachines",
	"config.Profile": "a profile",
	"config.Machine": "a machine",
	"diskspec.Spec":  "a disk",

	"config.Inventory": "inventory",
}

// nodeAt walks a mapping/sequence tree along path (string keys, int indices) and returns the deepest
// node found: the value itself or, when it is missing, the key of the closest parent present.
func nodeAt(n *yaml.Node, path []any) *yaml.Node {
	at := n // what to point at if the next step is missing
	for _, p := range path {
		if n.Kind == yaml.AliasNode && n.Alias != nil {
			n = n.Alias
		}
		var next, key *yaml.Node
		switch k := p.(type) {
		case string:
			if n.Kind == yaml.MappingNode {
				for i := 0; i+1 < len(n.Content); i += 2 {
					if n.Content[i].Value == k {
						key, next = n.Content[i], n.Content[i+1]
						break
					}
				}
			}
		case int:
			if n.Kind == yaml.SequenceNode && k < len(n.Content) {
				next, key = n.Content[k], n.Content[k]
			}
		}
		if next == nil {
			return at
		}
		n, at = next, key
		if next.Kind == yaml.ScalarNode {
			at = next
		}
	}
	return at
}

func pathString(path []any) string {
	var b strings.Builder
	for _, p := range path {
		switch k := p.(type) {
		case string:
			if b.Len() > 0 {
				b.WriteByte('.')
			}
			b.WriteString(k)
		case int:
			fmt.Fprintf(&b, "[%d]", k)
		}
	}
	return b.String()
}
