package machineapi

import (
	"fmt"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
)

// FromUnstructured converts a Machine read through a dynamic client or informer.
func FromUnstructured(u *unstructured.Unstructured) (*Machine, error) {
	var m Machine
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &m); err != nil {
		return nil, fmt.Errorf("machine %s: %w", u.GetName(), err)
	}
	return &m, nil
}

// ToUnstructured converts m for a dynamic client, with its apiVersion and kind set.
func ToUnstructured(m *Machine) (*unstructured.Unstructured, error) {
	obj, err := runtime.DefaultUnstructuredConverter.ToUnstructured(m)
	if err != nil {
		return nil, fmt.Errorf("machine %s: %w", m.Name, err)
	}
	u := &unstructured.Unstructured{Object: obj}
	u.SetGroupVersionKind(GVK)
	return u, nil
}
