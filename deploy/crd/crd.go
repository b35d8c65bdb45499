// Package crd holds pxejoin's CustomResourceDefinitions (the YAML files beside it, which
// `kubectl apply -f deploy/crd/` installs) and installs them from Go for tests and the lab.
package crd

import (
	"context"
	_ "embed"
	"fmt"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"sigs.k8s.io/yaml"
)

// Machines is the Machine CRD (machines.pxejoin.io) as YAML.
//
//go:embed machines.pxejoin.io.yaml
var Machines []byte

// gvr is the CustomResourceDefinition resource (no apiextensions client needed).
var gvr = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

// Install applies the CRD in doc (server-side apply, field manager fieldManager) and waits until
// the apiserver reports it Established, or ctx ends.
func Install(ctx context.Context, dyn dynamic.Interface, doc []byte, fieldManager string) error {
	var obj unstructured.Unstructured
	if err := yaml.Unmarshal(doc, &obj.Object); err != nil {
		return fmt.Errorf("crd: %w", err)
	}
	data, err := obj.MarshalJSON()
	if err != nil {
		return fmt.Errorf("crd: %w", err)
	}
	name := obj.GetName()
	if _, err := dyn.Resource(gvr).Patch(ctx, name, types.ApplyPatchType, data,
		metav1.PatchOptions{FieldManager: fieldManager, Force: ptr(true)}); err != nil {
		return fmt.Errorf("crd %s: %w", name, err)
	}
	for wait := 10 * time.Millisecond; ; wait = min(2*wait, 500*time.Millisecond) {
		got, err := dyn.Resource(gvr).Get(ctx, name, metav1.GetOptions{})
		if err == nil && established(got) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("crd %s: not Established: %w", name, ctx.Err())
		case <-time.After(wait):
		}
	}
}

func established(u *unstructured.Unstructured) bool {
	conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
	for _, c := range conds {
		m, _ := c.(map[string]any)
		if m["type"] == "Established" && m["status"] == "True" {
			return true
		}
	}
	return false
}

func ptr[T any](v T) *T { return &v }
