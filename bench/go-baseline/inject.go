package main

// The injection: the same decisions as sidecar-injector's two mutators (sidecar-injector/src/inject.rs),
// written the way most Go webhooks are: decode the pod into corev1.Pod with controller-runtime's
// admission.Decoder, change it, marshal it, and let admission.PatchResponseFromRaw diff the two
// documents into a JSON patch.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"regexp"
	"sort"
	"strings"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"
)

const (
	annotationPrefix = "sidecar-injector.expedia.com/"
	injectAnnotation = annotationPrefix + "inject"
	statusAnnotation = annotationPrefix + "status"
)

// excludedNamespaces are never injected, whatever their labels (sidecar-injector's excludedNamespaces).
var excludedNamespaces = map[string]bool{"kube-system": true, "kube-public": true}

// Sidecar is one catalog entry: what is added to a pod that asks for it by name.
type Sidecar struct {
	Name             string
	Containers       []corev1.Container
	Volumes          []corev1.Volume
	ImagePullSecrets []corev1.LocalObjectReference
}

// Catalog is the read-only, in-memory sidecar catalog, in the order names are listed in messages.
type Catalog []Sidecar

func (c Catalog) lookup(name string) *Sidecar {
	for i := range c {
		if c[i].Name == name {
			return &c[i]
		}
	}
	return nil
}

func (c Catalog) String() string {
	if len(c) == 0 {
		return "(empty catalog)"
	}
	names := make([]string, len(c))
	for i, s := range c {
		names[i] = s.Name
	}
	return strings.Join(names, ", ")
}

// DefaultCatalog is the haystack-agent entry of sidecar-injector/src/default-config.yaml
// (TestDefaultCatalogMatchesRustConfig keeps the two equal).
func DefaultCatalog() Catalog {
	return Catalog{{
		Name: "haystack-agent",
		Containers: []corev1.Container{{
			Name:  "haystack-agent",
			Image: "expediadotcom/haystack-agent:0.1",
			Args:  []string{"--config-provider", "file", "--file-path", "/app/haystack/agent.conf"},
			Env:   []corev1.EnvVar{{Name: "haystack_env", Value: "local"}},
			Resources: corev1.ResourceRequirements{
				Requests: corev1.ResourceList{
					corev1.ResourceCPU:    resource.MustParse("10m"),
					corev1.ResourceMemory: resource.MustParse("32Mi"),
				},
				Limits: corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("64Mi")},
			},
			VolumeMounts: []corev1.VolumeMount{{Name: "haystack-agent-config", MountPath: "/app/haystack"}},
		}},
		Volumes: []corev1.Volume{{
			Name:         "haystack-agent-config",
			VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}},
		}},
	}}
}

// Status is the value of the status annotation; its JSON form is the one sidecar-injector writes
// (`{"sidecars":[...],"containers":[...]}`), so that either injector recognises the other's pods.
type Status struct {
	Sidecars   []string `json:"sidecars"`
	Containers []string `json:"containers"`
}

// Injector is the admission.Handler.
type Injector struct {
	Catalog Catalog
	decoder admission.Decoder
}

// NewInjector returns a handler over catalog.
func NewInjector(catalog Catalog) *Injector {
	scheme := runtime.NewScheme()
	if err := corev1.AddToScheme(scheme); err != nil {
		panic(err) // static registration; cannot fail
	}
	return &Injector{Catalog: catalog, decoder: admission.NewDecoder(scheme)}
}

// Handle answers one AdmissionReview.
func (i *Injector) Handle(_ context.Context, req admission.Request) admission.Response {
	// sidecar-injector's gate: pods (no subresource), CREATE, not in an excluded namespace. The
	// namespace opt-in label is not checked: see README.md.
	if req.Kind.Group != "" || req.Kind.Version != "v1" || req.Kind.Kind != "Pod" ||
		req.SubResource != "" || req.Operation != admissionv1.Create || excludedNamespaces[req.Namespace] {
		return admission.Allowed("")
	}
	pod := &corev1.Pod{}
	if err := i.decoder.Decode(req, pod); err != nil {
		return admission.Errored(http.StatusBadRequest, err)
	}
	if _, ok := pod.Annotations[injectAnnotation]; !ok {
		return admission.Allowed("")
	}
	if denial := i.injectSidecars(pod); denial != "" {
		return admission.Denied(denial)
	}
	if denial := envFromAnnotations(pod); denial != "" {
		return admission.Denied(denial)
	}
	mutated, err := json.Marshal(pod)
	if err != nil {
		return admission.Errored(http.StatusInternalServerError, err)
	}
	return admission.PatchResponseFromRaw(req.Object.Raw, mutated)
}

// requested parses the inject annotation: comma-separated, spaces trimmed, empty items ignored,
// the first of a repeated name kept.
func requested(value string) []string {
	var out []string
	seen := map[string]bool{}
	for _, name := range strings.Split(value, ",") {
		name = strings.TrimSpace(name)
		if name != "" && !seen[name] {
			seen[name] = true
			out = append(out, name)
		}
	}
	return out
}

// injectSidecars adds the requested sidecars and the status annotation; a non-empty result is a
// denial message. A pod that already has the status annotation is left alone.
func (i *Injector) injectSidecars(pod *corev1.Pod) string {
	if _, done := pod.Annotations[statusAnnotation]; done {
		return ""
	}
	var entries []*Sidecar
	for _, name := range requested(pod.Annotations[injectAnnotation]) {
		entry := i.Catalog.lookup(name)
		if entry == nil {
			return fmt.Sprintf("sidecar `%s` is not in the catalog; known: %s", name, i.Catalog)
		}
		entries = append(entries, entry)
	}
	if len(entries) == 0 {
		return ""
	}
	containers, volumes, secrets := map[string]bool{}, map[string]bool{}, map[string]bool{}
	for _, c := range pod.Spec.Containers {
		containers[c.Name] = true
	}
	for _, c := range pod.Spec.InitContainers {
		containers[c.Name] = true
	}
	for _, v := range pod.Spec.Volumes {
		volumes[v.Name] = true
	}
	for _, s := range pod.Spec.ImagePullSecrets {
		secrets[s.Name] = true
	}
	collision := func(sidecar, what, name string) string {
		return fmt.Sprintf("sidecar `%s` adds %s `%s`, but the pod already has one with that name", sidecar, what, name)
	}
	status := Status{Sidecars: []string{}, Containers: []string{}}
	for _, entry := range entries {
		for _, c := range entry.Containers {
			if containers[c.Name] {
				return collision(entry.Name, "container", c.Name)
			}
			containers[c.Name] = true
			status.Containers = append(status.Containers, c.Name)
			// A deep copy: the env added below belongs to this pod, never to the shared catalog.
			pod.Spec.Containers = append(pod.Spec.Containers, *c.DeepCopy())
		}
		for _, v := range entry.Volumes {
			if volumes[v.Name] {
				return collision(entry.Name, "volume", v.Name)
			}
			volumes[v.Name] = true
			pod.Spec.Volumes = append(pod.Spec.Volumes, *v.DeepCopy())
		}
		for _, s := range entry.ImagePullSecrets {
			// The same pull secret twice is harmless: add it once.
			if !secrets[s.Name] {
				secrets[s.Name] = true
				pod.Spec.ImagePullSecrets = append(pod.Spec.ImagePullSecrets, s)
			}
		}
		status.Sidecars = append(status.Sidecars, entry.Name)
	}
	var encoded bytes.Buffer
	enc := json.NewEncoder(&encoded)
	enc.SetEscapeHTML(false) // serde_json does not escape <, >, &
	if err := enc.Encode(status); err != nil {
		return fmt.Sprintf("failed to encode the status: %v", err)
	}
	if pod.Annotations == nil {
		pod.Annotations = map[string]string{}
	}
	pod.Annotations[statusAnnotation] = strings.TrimSuffix(encoded.String(), "\n")
	return ""
}

// envName is what every Kubernetes release accepts as an env var name.
var envName = regexp.MustCompile(`^[-._a-zA-Z][-._a-zA-Z0-9]*$`)

// envFromAnnotations sets every other `<prefix>/<key>` annotation as env var `<key>` in the
// containers the status annotation lists (after an injection, or on a pod injected before).
func envFromAnnotations(pod *corev1.Pod) string {
	raw, ok := pod.Annotations[statusAnnotation]
	if !ok {
		return ""
	}
	var status struct {
		Sidecars   *[]string `json:"sidecars"`
		Containers *[]string `json:"containers"`
	}
	if err := json.Unmarshal([]byte(raw), &status); err != nil || status.Sidecars == nil || status.Containers == nil {
		return fmt.Sprintf("annotation `%s` is not a status this injector wrote; remove it to have the pod injected", statusAnnotation)
	}
	var names []string
	values := map[string]string{}
	for k, v := range pod.Annotations {
		key, found := strings.CutPrefix(k, annotationPrefix)
		if !found || k == injectAnnotation || k == statusAnnotation || key == "" {
			continue
		}
		if !envName.MatchString(key) {
			return fmt.Sprintf("annotation `%s%s` would become env var `%s`, which Kubernetes rejects; rename it, or set envNames: cIdentifier", annotationPrefix, key, key)
		}
		names = append(names, key)
		values[key] = v
	}
	if len(names) == 0 {
		return ""
	}
	sort.Strings(names)
	targets := map[string]bool{}
	for _, c := range *status.Containers {
		targets[c] = true
	}
	for _, list := range []([]corev1.Container){pod.Spec.InitContainers, pod.Spec.Containers} {
		for ci := range list {
			c := &list[ci]
			if !targets[c.Name] {
				continue
			}
			for _, name := range names {
				// kubelet expands `$(VAR)` and turns `$$` into `$`: doubling every `$` makes the
				// container see exactly the annotation's bytes (sidecar-injector's literalEnvValues).
				v := corev1.EnvVar{Name: name, Value: strings.ReplaceAll(values[name], "$", "$$")}
				replaced := false
				for ei := range c.Env {
					if c.Env[ei].Name == name {
						c.Env[ei] = v // an annotation overrides the catalog's var (and its valueFrom)
						replaced = true
						break
					}
				}
				if !replaced {
					c.Env = append(c.Env, v)
				}
			}
		}
	}
	return ""
}
