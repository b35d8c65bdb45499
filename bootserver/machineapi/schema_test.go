package machineapi

import (
	"reflect"
	"slices"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/pxejoin/pxejoin/deploy/crd"
)

// schemaNode is the part of an OpenAPI v3 schema the comparison reads.
type schemaNode struct {
	Type                 string                `json:"type"`
	Properties           map[string]schemaNode `json:"properties"`
	Items                *schemaNode           `json:"items"`
	AdditionalProperties *schemaNode           `json:"additionalProperties"`
}

// TestCRDMatchesTypes checks that deploy/crd's schema and the Go types name the same fields with
// the same types, both ways: a field the schema lacks would be pruned by the apiserver, and one
// the Go types lack would be dropped by the converter.
func TestCRDMatchesTypes(t *testing.T) {
	var doc struct {
		Spec struct {
			Group string `json:"group"`
			Names struct {
				Kind       string   `json:"kind"`
				Plural     string   `json:"plural"`
				ShortNames []string `json:"shortNames"`
			} `json:"names"`
			Versions []struct {
				Name   string `json:"name"`
				Schema struct {
					OpenAPIV3Schema schemaNode `json:"openAPIV3Schema"`
				} `json:"schema"`
			} `json:"versions"`
		} `json:"spec"`
	}
	if err := yaml.Unmarshal(crd.Machines, &doc); err != nil {
		t.Fatal(err)
	}
	s := doc.Spec
	if s.Group != Group || s.Names.Kind != Kind || s.Names.Plural != Resource || !slices.Contains(s.Names.ShortNames, ShortName) {
		t.Errorf("CRD names %s/%s/%s %v, Go constants %s/%s/%s %s", s.Group, s.Names.Kind, s.Names.Plural, s.Names.ShortNames, Group, Kind, Resource, ShortName)
	}
	if len(s.Versions) != 1 || s.Versions[0].Name != Version {
		t.Fatalf("CRD versions %+v, want only %s", s.Versions, Version)
	}
	root := s.Versions[0].Schema.OpenAPIV3Schema
	for _, part := range []string{"spec", "status"} {
		f, _ := reflect.TypeFor[Machine]().FieldByName(strings.ToUpper(part[:1]) + part[1:])
		compare(t, "."+part, root.Properties[part], f.Type)
	}
}

var timeType = reflect.TypeFor[metav1.Time]()

// compare reports where schema n and Go type typ disagree.
func compare(t *testing.T, path string, n schemaNode, typ reflect.Type) {
	t.Helper()
	for typ.Kind() == reflect.Pointer {
		typ = typ.Elem()
	}
	want := ""
	switch {
	case typ == timeType, typ.Kind() == reflect.String:
		want = "string"
	case typ.Kind() == reflect.Bool:
		want = "boolean"
	case typ.Kind() >= reflect.Int && typ.Kind() <= reflect.Uint64:
		want = "integer"
	case typ.Kind() == reflect.Slice:
		want = "array"
	case typ.Kind() == reflect.Map, typ.Kind() == reflect.Struct:
		want = "object"
	}
	if n.Type != want {
		t.Errorf("%s: schema type %q, Go type %s (%q)", path, n.Type, typ, want)
		return
	}
	switch {
	case typ.Kind() == reflect.Slice:
		if n.Items == nil {
			t.Errorf("%s: schema has no items", path)
			return
		}
		compare(t, path+"[]", *n.Items, typ.Elem())
	case typ.Kind() == reflect.Map:
		if n.AdditionalProperties == nil {
			t.Errorf("%s: schema has no additionalProperties", path)
			return
		}
		compare(t, path+"{}", *n.AdditionalProperties, typ.Elem())
	case typ.Kind() == reflect.Struct && typ != timeType:
		fields := jsonFields(typ)
		for name, ft := range fields {
			sub, ok := n.Properties[name]
			if !ok {
				t.Errorf("%s.%s: in the Go type, not in the schema (the apiserver would prune it)", path, name)
				continue
			}
			compare(t, path+"."+name, sub, ft)
		}
		for name := range n.Properties {
			if _, ok := fields[name]; !ok {
				t.Errorf("%s.%s: in the schema, not in the Go type (the converter would drop it)", path, name)
			}
		}
	}
}

// jsonFields maps a struct's JSON field names to their types, inlining embedded structs.
func jsonFields(typ reflect.Type) map[string]reflect.Type {
	out := map[string]reflect.Type{}
	for i := range typ.NumField() {
		f := typ.Field(i)
		name, opts, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "-" || !f.IsExported() {
			continue
		}
		if name == "" && (f.Anonymous || strings.Contains(opts, "inline")) {
			for k, v := range jsonFields(f.Type) {
				out[k] = v
			}
			continue
		}
		if name == "" {
			name = f.Name
		}
		out[name] = f.Type
	}
	return out
}
