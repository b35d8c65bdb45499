package join

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"

	jsonpatch "gopkg.in/evanphx/json-patch.v4"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/strategicpatch"
	kubeletv1beta1 "k8s.io/kubelet/config/v1beta1"
	"sigs.k8s.io/yaml"
)

// patchFile matches kubeadm's patch file names: target[suffix][+patchtype].(json|yaml), with kubeadm's
// targets.
var patchFile = regexp.MustCompile(`^(etcd|kube-apiserver|kube-controller-manager|kube-scheduler|kubeletconfiguration|corednsdeployment)([^+.]*)(?:\+(strategic|merge|json))?\.(json|yaml|yml)$`)

// applyPatches applies, in file-name order, the patches in dir for target to doc (YAML) and returns
// the patched YAML. Files for other targets are ignored. Strategic merge patches use the target's type:
// a Pod for the control-plane components, the KubeletConfiguration for "kubeletconfiguration".
func applyPatches(dir, target string, doc []byte, printf func(string, ...any)) ([]byte, error) {
	var schema any = kubeletv1beta1.KubeletConfiguration{}
	if target != "kubeletconfiguration" {
		schema = corev1.Pod{}
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("cannot read the patches directory: %w", err)
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].Name() < entries[j].Name() })
	cur, err := yaml.YAMLToJSON(doc)
	if err != nil {
		return nil, err
	}
	for _, e := range entries {
		m := patchFile.FindStringSubmatch(e.Name())
		if e.IsDir() || m == nil || m[1] != target {
			continue
		}
		raw, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			return nil, err
		}
		pj, err := yaml.YAMLToJSON(raw)
		if err != nil {
			return nil, fmt.Errorf("patch %s is not YAML or JSON: %w", e.Name(), err)
		}
		switch kind := m[3]; kind {
		case "", "strategic":
			cur, err = strategicpatch.StrategicMergePatch(cur, pj, schema)
		case "merge":
			cur, err = jsonpatch.MergePatch(cur, pj)
		case "json":
			var p jsonpatch.Patch
			if p, err = jsonpatch.DecodePatch(pj); err == nil {
				cur, err = p.Apply(cur)
			}
		}
		if err != nil {
			return nil, fmt.Errorf("applying patch %s: %w", e.Name(), err)
		}
		printf("[patches] Applied patch %s to %s", e.Name(), target)
	}
	if !json.Valid(cur) {
		return nil, fmt.Errorf("patching %s produced invalid JSON", target)
	}
	return yaml.JSONToYAML(cur)
}
