{{/* Names, labels and the certificate logic shared by the templates. */}}

{{- define "sidecar-injector.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "sidecar-injector.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "sidecar-injector.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sidecar-injector.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "sidecar-injector.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "sidecar-injector.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: admission-webhook
{{- end }}

{{- define "sidecar-injector.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "sidecar-injector.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "sidecar-injector.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The certificate mode, by the documented precedence. */}}
{{- define "sidecar-injector.tlsMode" -}}
{{- if .Values.tls.certManager.enabled }}cert-manager
{{- else if .Values.tls.existingSecret }}user-provided
{{- else }}helm-generated
{{- end }}
{{- end }}

{{- define "sidecar-injector.tlsSecretName" -}}
{{- if eq (include "sidecar-injector.tlsMode" .) "user-provided" }}
{{- .Values.tls.existingSecret }}
{{- else }}
{{- printf "%s-tls" (include "sidecar-injector.fullname" .) }}
{{- end }}
{{- end }}

{{/* The DNS names the API server uses to reach the Service. */}}
{{- define "sidecar-injector.dnsNames" -}}
{{- $svc := include "sidecar-injector.fullname" . }}
{{- $ns := .Release.Namespace }}
{{- toJson (list $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.cluster.local" $svc $ns)) }}
{{- end }}

{{- define "sidecar-injector.certManagerCertificate" -}}
{{- printf "%s-serving" (include "sidecar-injector.fullname" .) }}
{{- end }}

{{/*
Helm-generated certificates, computed once per render (every template sees the same pair): the
Secret already in the cluster is reused as is while its serving certificate is valid for more than
`renewBeforeDays` and for the same DNS names; otherwise a new serving certificate is signed by the
existing CA; a new CA is made only when none exists (first install) or it is about to expire.
Returns JSON: {"ca.crt", "ca.key", "tls.crt", "tls.key", "notAfter", "caNotAfter"}.
*/}}
{{- define "sidecar-injector.generatedTLS" -}}
{{- if not (hasKey .Values "__generatedTLS") }}
{{- $g := .Values.tls.generated }}
{{- $name := include "sidecar-injector.tlsSecretName" . }}
{{- $dnsNames := include "sidecar-injector.dnsNames" . | fromJsonArray }}
{{- $now := now | unixEpoch | int64 }}
{{- $renewBefore := mul (int64 $g.renewBeforeDays) 86400 }}
{{- $existing := lookup "v1" "Secret" .Release.Namespace $name }}
{{- $out := dict }}
{{- $ca := dict }}
{{- if and $existing $existing.data $existing.metadata.annotations }}
{{- $ann := $existing.metadata.annotations }}
{{- $caNotAfter := int64 (default "0" (get $ann "sidecar-injector.admission-kit.dev/ca-not-after")) }}
{{- $notAfter := int64 (default "0" (get $ann "sidecar-injector.admission-kit.dev/not-after")) }}
{{- $names := default "" (get $ann "sidecar-injector.admission-kit.dev/dns-names") }}
{{- if and (hasKey $existing.data "ca.crt") (hasKey $existing.data "ca.key") (gt (sub $caNotAfter $now) $renewBefore) }}
{{- $caCrt := index $existing.data "ca.crt" | b64dec }}
{{- $caKey := index $existing.data "ca.key" | b64dec }}
{{- $ca = buildCustomCert (b64enc $caCrt) (b64enc $caKey) }}
{{- $_ := set $out "ca.crt" $caCrt }}
{{- $_ := set $out "ca.key" $caKey }}
{{- $_ := set $out "caNotAfter" $caNotAfter }}
{{- if and (hasKey $existing.data "tls.crt") (hasKey $existing.data "tls.key") (gt (sub $notAfter $now) $renewBefore) (eq $names (join "," $dnsNames)) }}
{{- $_ := set $out "tls.crt" (index $existing.data "tls.crt" | b64dec) }}
{{- $_ := set $out "tls.key" (index $existing.data "tls.key" | b64dec) }}
{{- $_ := set $out "notAfter" $notAfter }}
{{- end }}
{{- end }}
{{- end }}
{{- if not (hasKey $out "ca.crt") }}
{{- $ca = genCA (printf "%s-ca" (include "sidecar-injector.fullname" .)) (int $g.caValidityDays) }}
{{- $_ := set $out "ca.crt" $ca.Cert }}
{{- $_ := set $out "ca.key" $ca.Key }}
{{- $_ := set $out "caNotAfter" (add $now (mul (int64 $g.caValidityDays) 86400)) }}
{{- end }}
{{- if not (hasKey $out "tls.crt") }}
{{- $days := min (int64 $g.certValidityDays) (div (sub (get $out "caNotAfter") $now) 86400) }}
{{- $cert := genSignedCert (index $dnsNames 2) (list) $dnsNames (int $days) $ca }}
{{- $_ := set $out "tls.crt" $cert.Cert }}
{{- $_ := set $out "tls.key" $cert.Key }}
{{- $_ := set $out "notAfter" (add $now (mul $days 86400)) }}
{{- end }}
{{- $_ := set .Values "__generatedTLS" $out }}
{{- end }}
{{- toJson (get .Values "__generatedTLS") }}
{{- end }}

{{/* The caBundle (PEM) for the webhook configuration, or "" when cert-manager injects it. */}}
{{- define "sidecar-injector.caBundle" -}}
{{- $mode := include "sidecar-injector.tlsMode" . }}
{{- if and .Values.tls.caBundle (or (eq $mode "user-provided") .Values.webhook.url) }}
{{- .Values.tls.caBundle }}
{{- else if eq $mode "helm-generated" }}
{{- get (include "sidecar-injector.generatedTLS" . | fromJson) "ca.crt" }}
{{- end }}
{{- end }}

{{/* The injector's configuration file. */}}
{{- define "sidecar-injector.config" -}}
{{- $i := .Values.injector }}
{{- $excluded := concat (list "kube-system" "kube-public" .Release.Namespace) .Values.webhook.namespaceSelector.excludeNamespaces | uniq }}
annotationPrefix: {{ $i.annotationPrefix | quote }}
injectAnnotationName: {{ $i.injectAnnotationName | quote }}
namespaceLabelKey: {{ .Values.webhook.namespaceSelector.optInLabel.key | quote }}
namespaceLabelValue: {{ .Values.webhook.namespaceSelector.optInLabel.value | quote }}
excludedNamespaces: {{ toJson $excluded }}
unknownSidecar: {{ $i.unknownSidecar }}
onCollision: {{ $i.onCollision }}
overridePodMetadata: {{ $i.overridePodMetadata }}
envNames: {{ $i.envNames }}
nativeSidecarPlacement: {{ $i.nativeSidecarPlacement }}
literalEnvValues: {{ $i.literalEnvValues }}
{{- with $i.annotationEnv }}
annotationEnv: {{ toJson . }}
{{- end }}
catalogPaths: [/etc/sidecar-injector/catalog/{{ .Values.catalog.key }}]
catalogReloadInterval: {{ .Values.catalog.reloadInterval | quote }}
namespaceCatalogs: {{ $i.namespaceCatalogs }}
namespaceCatalogKey: {{ $i.namespaceCatalogKey | quote }}
namespaceCatalogSelector: {{ $i.namespaceCatalogSelector | quote }}
webhookName: {{ .Values.webhook.name | quote }}
failurePolicy: {{ .Values.webhook.failurePolicy }}
timeoutSeconds: {{ .Values.webhook.timeoutSeconds }}
reinvocationPolicy: {{ .Values.webhook.reinvocationPolicy }}
matchConditions: {{ .Values.webhook.matchConditions }}
server:
  webhookAddr: "0.0.0.0:8443"
  adminAddr: "0.0.0.0:8080"
  tlsCertFile: /etc/sidecar-injector/tls/tls.crt
  tlsKeyFile: /etc/sidecar-injector/tls/tls.key
  certReloadInterval: {{ $i.certReloadInterval | quote }}
  maxBodyBytes: {{ int64 $i.maxBodyBytes }}
  maxConnections: {{ int64 $i.maxConnections }}
  drainDelay: "{{ $i.drainDelaySeconds }}s"
  shutdownTimeout: "{{ $i.shutdownTimeoutSeconds }}s"
  namespaceCache: {{ $i.namespaceCache }}
  cacheMaxStaleness: {{ $i.cacheMaxStaleness | quote }}
  logFormat: {{ $i.logFormat }}
{{- end }}

{{/* Which namespaces the webhook (or, in policy mode, the policies) apply to: the opt-in label,
never kube-system, kube-public, the release namespace or `excludeNamespaces`, and not namespaces
carrying the opt-out label. */}}
{{- define "sidecar-injector.namespaceSelector" -}}
{{- $ns := .Values.webhook.namespaceSelector }}
{{- $excluded := concat (list "kube-system" "kube-public" .Release.Namespace) $ns.excludeNamespaces | uniq }}
matchExpressions:
  - key: {{ $ns.optInLabel.key | quote }}
    operator: In
    values: [{{ $ns.optInLabel.value | quote }}]
  - key: kubernetes.io/metadata.name
    operator: NotIn
    values: {{ toJson $excluded }}
  {{- if $ns.optOutLabel.key }}
  - key: {{ $ns.optOutLabel.key | quote }}
    operator: NotIn
    values: [{{ $ns.optOutLabel.value | quote }}]
  {{- end }}
{{- end }}

{{/* Which pods: not those carrying the opt-out label. */}}
{{- define "sidecar-injector.objectSelector" -}}
{{- with .Values.webhook.objectSelector.optOutLabel }}
{{- if .key }}
matchExpressions:
  - key: {{ .key | quote }}
    operator: NotIn
    values: [{{ .value | quote }}]
{{- else }}
{}
{{- end }}
{{- end }}
{{- end }}
