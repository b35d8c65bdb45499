package server

import (
	"context"
	"encoding/json"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/pxejoin/pxejoin/bootserver/config"
	"github.com/pxejoin/pxejoin/bootserver/machineapi"
)

// reimageFunc is httpd's Config.Reimage with the Machine inventory: it annotates the Machine
// (machineapi.AnnotationReimage) so that every boot server carries the request; nil with a file
// inventory (the local store is the record).
func (s *Server) reimageFunc(cl *Cluster) func(ctx context.Context, node, req string) error {
	if s.cfg.Inventory.Source != config.InventoryKubernetes || cl == nil || cl.Dynamic == nil {
		return nil
	}
	return func(ctx context.Context, node, req string) error {
		patch, err := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]string{machineapi.AnnotationReimage: req}}})
		if err != nil {
			return err
		}
		_, err = cl.Dynamic.Resource(machineapi.GVR).Patch(ctx, node, types.MergePatchType, patch, metav1.PatchOptions{FieldManager: "pxejoin-reimage"})
		return err
	}
}
