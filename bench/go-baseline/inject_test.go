package main

// Each testdata/<case>.pod.json goes through the real controller-runtime webhook handler as an
// admission.k8s.io/v1 AdmissionReview; the answer's JSON patch is applied with evanphx/json-patch
// and the result must equal testdata/<case>.want: the pod sidecar-injector makes of the same input
// (or its denial), as written by `compare.sh --update`.

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	jsonpatch "github.com/evanphx/json-patch/v5"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/webhook"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"
	"sigs.k8s.io/yaml"
)

const testNamespace = "bench"

// review is an AdmissionReview for a pod CREATE, as compare.sh's reviewtool builds it.
func review(t *testing.T, pod []byte) []byte {
	t.Helper()
	var meta struct {
		Metadata struct {
			Name      string `json:"name"`
			Namespace string `json:"namespace"`
		} `json:"metadata"`
	}
	if err := json.Unmarshal(pod, &meta); err != nil {
		t.Fatal(err)
	}
	namespace := testNamespace
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
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	return body
}

// serve posts a review to the handler as controller-runtime's server would and returns the answer.
func serve(t *testing.T, body []byte) *admissionv1.AdmissionResponse {
	t.Helper()
	hook := &webhook.Admission{Handler: NewInjector(DefaultCatalog())}
	req := httptest.NewRequest(http.MethodPost, "/mutate", bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	rec := httptest.NewRecorder()
	hook.ServeHTTP(rec, req)
	if rec.Code != http.StatusOK {
		t.Fatalf("HTTP %d: %s", rec.Code, rec.Body)
	}
	var answer admissionv1.AdmissionReview
	if err := json.Unmarshal(rec.Body.Bytes(), &answer); err != nil {
		t.Fatal(err)
	}
	if answer.Response == nil || answer.Response.UID != "0df28fbd-5f5f-4a32-b4b3-2a9cd1ba0b1e" {
		t.Fatalf("answer without the request's uid: %s", rec.Body)
	}
	return answer.Response
}

// outcome is the patched pod as canonical JSON, or "denied: <message>".
func outcome(t *testing.T, pod []byte, answer *admissionv1.AdmissionResponse) string {
	t.Helper()
	if !answer.Allowed {
		return "denied: " + answer.Result.Message
	}
	if len(answer.Patch) > 0 {
		if answer.PatchType == nil || *answer.PatchType != admissionv1.PatchTypeJSONPatch {
			t.Fatalf("patch without patchType JSONPatch")
		}
		patch, err := jsonpatch.DecodePatch(answer.Patch)
		if err != nil {
			t.Fatal(err)
		}
		if pod, err = patch.Apply(pod); err != nil {
			t.Fatalf("the patch does not apply: %v", err)
		}
	}
	return canonical(t, pod)
}

func canonical(t *testing.T, doc []byte) string {
	t.Helper()
	var value any
	if err := json.Unmarshal(doc, &value); err != nil {
		t.Fatal(err)
	}
	out, err := json.MarshalIndent(value, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

func read(t *testing.T, path string) []byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func TestSameResultAsSidecarInjector(t *testing.T) {
	pods, err := filepath.Glob("testdata/*.pod.json")
	if err != nil || len(pods) == 0 {
		t.Fatalf("no testdata/*.pod.json (%v)", err)
	}
	counts := map[string]int{}
	for _, path := range pods {
		name := strings.TrimSuffix(filepath.Base(path), ".pod.json")
		t.Run(name, func(t *testing.T) {
			pod := read(t, path)
			want := strings.TrimSpace(string(read(t, "testdata/"+name+".want")))
			if !strings.HasPrefix(want, "denied: ") {
				want = canonical(t, []byte(want))
			}
			got := outcome(t, pod, serve(t, review(t, pod)))
			if got != want {
				t.Fatalf("go-baseline:\n%s\nsidecar-injector:\n%s", got, want)
			}
			switch {
			case strings.HasPrefix(want, "denied: "):
				counts["denied"]++
			case want == canonical(t, pod):
				counts["unchanged"]++
			default:
				counts["injected"]++
			}
		})
	}
	// The fixtures must cover every kind of answer, or equality proves little.
	for _, kind := range []string{"injected", "unchanged", "denied"} {
		if counts[kind] == 0 {
			t.Errorf("no fixture is %s", kind)
		}
	}
}

// The benchmark case in detail, independently of the .want file.
func TestBenchmarkPodIsInjected(t *testing.T) {
	original := read(t, "testdata/benchmark.pod.json")
	var pod corev1.Pod
	if err := json.Unmarshal([]byte(outcome(t, original, serve(t, review(t, original)))), &pod); err != nil {
		t.Fatal(err)
	}
	if got := pod.Annotations[statusAnnotation]; got != `{"sidecars":["haystack-agent"],"containers":["haystack-agent"]}` {
		t.Errorf("status annotation %q", got)
	}
	if got := pod.Annotations["kubectl.kubernetes.io/restartedAt"]; got != "2022-03-25T13:36:51-05:00" {
		t.Errorf("the pod's own annotations were not kept: %v", pod.Annotations)
	}
	if len(pod.Spec.Containers) != 2 || pod.Spec.Containers[1].Name != "haystack-agent" {
		t.Fatalf("containers: %+v", pod.Spec.Containers)
	}
	wantEnv := []corev1.EnvVar{
		{Name: "haystack_env", Value: "local"},
		{Name: "price-note", Value: "costs $$5 a month; see $$(HOME)"},
		{Name: "some-api-key", Value: "6feab492-fc9b-4c38-b50d-3791718c8203"},
	}
	if !reflect.DeepEqual(pod.Spec.Containers[1].Env, wantEnv) {
		t.Errorf("env %+v, want %+v", pod.Spec.Containers[1].Env, wantEnv)
	}
	if pod.Spec.Containers[0].Env != nil {
		t.Errorf("the pod's own container got env: %+v", pod.Spec.Containers[0].Env)
	}
	if last := pod.Spec.Volumes[len(pod.Spec.Volumes)-1]; last.Name != "haystack-agent-config" || last.EmptyDir == nil {
		t.Errorf("volumes: %+v", pod.Spec.Volumes)
	}
}

func TestInjectedPodIsLeftAlone(t *testing.T) {
	original := read(t, "testdata/benchmark.pod.json")
	injected := []byte(outcome(t, original, serve(t, review(t, original))))
	answer := serve(t, review(t, injected))
	if !answer.Allowed || len(answer.Patch) != 0 || answer.PatchType != nil {
		t.Fatalf("second pass: allowed=%v patch=%s", answer.Allowed, answer.Patch)
	}
}

// One pod's annotations must never reach the catalog (the Expedia injector's shared-catalog fault).
func TestCatalogIsNotChangedByAPod(t *testing.T) {
	injector := NewInjector(DefaultCatalog())
	pod := &corev1.Pod{}
	pod.Annotations = map[string]string{injectAnnotation: "haystack-agent", annotationPrefix + "secret": "pod-a"}
	if denial := injector.injectSidecars(pod); denial != "" {
		t.Fatal(denial)
	}
	if denial := envFromAnnotations(pod); denial != "" {
		t.Fatal(denial)
	}
	if len(pod.Spec.Containers[0].Env) != 2 {
		t.Fatalf("env: %+v", pod.Spec.Containers[0].Env)
	}
	if !reflect.DeepEqual(injector.Catalog, DefaultCatalog()) {
		t.Fatalf("the catalog changed: %+v", injector.Catalog[0].Containers[0].Env)
	}
}

// The Go catalog must be sidecar-injector's default haystack-agent entry.
func TestDefaultCatalogMatchesRustConfig(t *testing.T) {
	config, err := yaml.YAMLToJSON(read(t, "../../sidecar-injector/src/default-config.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var parsed struct {
		Sidecars []map[string]json.RawMessage `json:"sidecars"`
	}
	if err := json.Unmarshal(config, &parsed); err != nil {
		t.Fatal(err)
	}
	catalog := DefaultCatalog()
	if len(parsed.Sidecars) != len(catalog) {
		t.Fatalf("default-config.yaml has %d sidecars, the Go catalog %d", len(parsed.Sidecars), len(catalog))
	}
	for i, entry := range parsed.Sidecars {
		mine := catalog[i]
		for field, value := range entry {
			var got any
			switch field {
			case "name":
				got = mine.Name
			case "containers":
				got = mine.Containers
			case "volumes":
				got = mine.Volumes
			case "imagePullSecrets":
				got = mine.ImagePullSecrets
			default:
				t.Fatalf("sidecar %d has %q, which the Go catalog does not implement", i, field)
			}
			encoded, err := json.Marshal(got)
			if err != nil {
				t.Fatal(err)
			}
			if a, b := canonical(t, encoded), canonical(t, value); a != b {
				t.Errorf("sidecar %d %s:\nGo:   %s\nYAML: %s", i, field, a, b)
			}
		}
	}
}

// The equality above holds for pods in the form the API server sends, which a corev1.Pod JSON
// round trip leaves unchanged; every fixture must be one (see README.md, "Inputs").
func TestFixturesSurviveTheTypedRoundTrip(t *testing.T) {
	pods, _ := filepath.Glob("testdata/*.pod.json")
	decoder := NewInjector(nil).decoder
	for _, path := range pods {
		raw := read(t, path)
		pod := &corev1.Pod{}
		if err := decoder.DecodeRaw(runtime.RawExtension{Raw: raw}, pod); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		again, err := json.Marshal(pod)
		if err != nil {
			t.Fatal(err)
		}
		if resp := admission.PatchResponseFromRaw(raw, again); len(resp.Patches) != 0 {
			t.Errorf("%s is not in API-server form; the round trip changes it: %v", path, resp.Patches)
		}
	}
}

// And this is why: a hand-written pod is normalised by the typed round trip, so the Go baseline's
// patch carries these extra operations where sidecar-injector's does not.
func TestHandWrittenPodIsNormalised(t *testing.T) {
	pod := []byte(`{"apiVersion":"v1","kind":"Pod","metadata":{"name":"hand","creationTimestamp":null,
		"annotations":{"sidecar-injector.expedia.com/inject":"haystack-agent"}},
		"spec":{"containers":[{"name":"app","image":"busybox"}]}}`)
	answer := serve(t, review(t, pod))
	var ops []map[string]any
	if err := json.Unmarshal(answer.Patch, &ops); err != nil {
		t.Fatal(err)
	}
	paths := map[string]string{}
	for _, op := range ops {
		paths[op["path"].(string)] = op["op"].(string)
	}
	for path, op := range map[string]string{
		"/metadata/creationTimestamp":  "remove",
		"/spec/containers/0/resources": "add",
		"/status":                      "add",
	} {
		if paths[path] != op {
			t.Errorf("expected %s %s among %v", op, path, paths)
		}
	}
}
