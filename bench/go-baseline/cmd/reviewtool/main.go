// Command reviewtool is compare.sh's helper (not part of the server): it builds an AdmissionReview
// for a pod, applies a webhook's answer to the pod, and prints documents in one canonical JSON form
// (sorted keys, two-space indent) so that two injectors' results can be compared with diff.
//
//	reviewtool review POD NAMESPACE   an admission.k8s.io/v1 AdmissionReview: pod CREATE in NAMESPACE
//	                                  (the pod's own metadata.namespace wins, as for sidecar-injector inject)
//	reviewtool apply POD ANSWER       the pod with ANSWER's JSON patch applied, or "denied: <message>"
//	reviewtool canon FILE             the first document of a YAML or JSON file
//	reviewtool free-port              a TCP port on 127.0.0.1 that was free a moment ago
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"os"

	jsonpatch "github.com/evanphx/json-patch/v5"
	admissionv1 "k8s.io/api/admission/v1"
	"sigs.k8s.io/yaml"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintf(os.Stderr, "reviewtool: %v\n", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	switch {
	case len(args) == 3 && args[0] == "review":
		return review(args[1], args[2])
	case len(args) == 3 && args[0] == "apply":
		return apply(args[1], args[2])
	case len(args) == 2 && args[0] == "canon":
		doc, err := readJSON(args[1])
		if err != nil {
			return err
		}
		return printCanonical(doc)
	case len(args) == 1 && args[0] == "free-port":
		// controller-runtime's server has no "port 0" (0 means its default, 9443).
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		defer l.Close()
		_, err = fmt.Println(l.Addr().(*net.TCPAddr).Port)
		return err
	}
	return fmt.Errorf("usage: reviewtool review POD NAMESPACE | apply POD ANSWER | canon FILE | free-port")
}

// readJSON reads a JSON or YAML file (the first document) as JSON.
func readJSON(path string) ([]byte, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if doc, _, found := bytes.Cut(raw, []byte("\n---")); found && len(bytes.TrimSpace(doc)) > 0 {
		raw = doc
	}
	out, err := yaml.YAMLToJSON(raw)
	if err != nil {
		return nil, fmt.Errorf("failed to parse %s: %w", path, err)
	}
	return out, nil
}

func printCanonical(doc []byte) error {
	var value any
	dec := json.NewDecoder(bytes.NewReader(doc))
	dec.UseNumber()
	if err := dec.Decode(&value); err != nil {
		return err
	}
	out, err := json.MarshalIndent(value, "", "  ") // maps marshal with sorted keys
	if err != nil {
		return err
	}
	_, err = fmt.Printf("%s\n", out)
	return err
}

func review(podPath, namespace string) error {
	pod, err := readJSON(podPath)
	if err != nil {
		return err
	}
	var meta struct {
		Metadata struct {
			Name      string `json:"name"`
			Namespace string `json:"namespace"`
		} `json:"metadata"`
	}
	if err := json.Unmarshal(pod, &meta); err != nil {
		return err
	}
	if meta.Metadata.Namespace != "" {
		namespace = meta.Metadata.Namespace
	}
	body, err := json.Marshal(map[string]any{
		"apiVersion": "admission.k8s.io/v1",
		"kind":       "AdmissionReview",
		"request": map[string]any{
			"uid":       "0df28fbd-5f5f-4a32-b4b3-2a9cd1ba0b1e",
			"kind":      map[string]string{"group": "", "version": "v1", "kind": "Pod"},
			"resource":  map[string]string{"group": "", "version": "v1", "resource": "pods"},
			"name":      meta.Metadata.Name,
			"namespace": namespace,
			"operation": "CREATE",
			"userInfo":  map[string]any{"username": "system:serviceaccount:kube-system:replicaset-controller"},
			"object":    json.RawMessage(pod),
			"dryRun":    false,
		},
	})
	if err != nil {
		return err
	}
	_, err = fmt.Printf("%s\n", body)
	return err
}

func apply(podPath, answerPath string) error {
	pod, err := readJSON(podPath)
	if err != nil {
		return err
	}
	raw, err := os.ReadFile(answerPath)
	if err != nil {
		return err
	}
	var answer admissionv1.AdmissionReview
	if err := json.Unmarshal(raw, &answer); err != nil {
		return fmt.Errorf("failed to parse the answer %s: %w", answerPath, err)
	}
	if answer.Response == nil {
		return fmt.Errorf("the answer %s has no response", answerPath)
	}
	if !answer.Response.Allowed {
		message := ""
		if answer.Response.Result != nil {
			message = answer.Response.Result.Message
		}
		_, err = fmt.Printf("denied: %s\n", message)
		return err
	}
	if len(answer.Response.Patch) > 0 {
		if answer.Response.PatchType == nil || *answer.Response.PatchType != admissionv1.PatchTypeJSONPatch {
			return fmt.Errorf("the answer has a patch but patchType is not JSONPatch")
		}
		patch, err := jsonpatch.DecodePatch(answer.Response.Patch)
		if err != nil {
			return fmt.Errorf("failed to decode the patch: %w", err)
		}
		if pod, err = patch.Apply(pod); err != nil {
			return fmt.Errorf("failed to apply the patch: %w", err)
		}
	}
	return printCanonical(pod)
}
