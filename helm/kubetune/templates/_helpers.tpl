{{/*
Named templates shared by the chart's templates: names, labels, images and the RBAC rules
(the ClusterRole of cluster-wide mode and the Roles of namespaced mode list the same rules).
*/}}

{{- define "kubetune.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The full name: "<release>-<chart>", or the release name when it already contains the chart's. */}}
{{- define "kubetune.fullname" -}}
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

{{- define "kubetune.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels every object carries; `helm uninstall` leaves nothing with them behind. */}}
{{- define "kubetune.labels" -}}
helm.sh/chart: {{ include "kubetune.chart" . }}
{{ include "kubetune.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kubetune
{{- end }}

{{- define "kubetune.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kubetune.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "kubetune.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kubetune.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "kubetune.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{- define "kubetune.trainerImage" -}}
{{- printf "%s:%s" .Values.trainer.image.repository (default .Chart.AppVersion .Values.trainer.image.tag) }}
{{- end }}

{{/* True (non-empty) in namespaced mode. */}}
{{- define "kubetune.namespaced" -}}
{{- if .Values.watch.namespaces }}true{{ end }}
{{- end }}

{{/* Namespaces that get the trainer ServiceAccount. */}}
{{- define "kubetune.trainerNamespaces" -}}
{{- if .Values.watch.namespaces }}
{{- toJson .Values.watch.namespaces }}
{{- else }}
{{- toJson .Values.trainer.serviceAccount.namespaces }}
{{- end }}
{{- end }}

{{/*
What the operator does in the namespaces it serves, and nothing more (each verb is used by
operator/kubetune/clients/kube.py or by kopf; tests/helm/test_rbac.py checks the audit log):
- its two kinds: read and watch; TunedModel metadata patch (the storage finalizer);
  status patches of both;
- finetuningtasks/finalizers update: trial Jobs set blockOwnerDeletion on their
  ownerReference, which the OwnerReferencesPermissionEnforcement admission plugin checks;
- Jobs: list and watch (kopf and the reconciler), create and delete; Pods: list (exit codes
  and termination messages of trials); Secrets: get (the S3 credentials);
- Events: create (kopf posts core v1 Events; it never updates them).
*/}}
{{- define "kubetune.rules" -}}
- apiGroups: ["kubetune.dev"]
  resources: ["tunedmodels", "finetuningtasks"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["kubetune.dev"]
  resources: ["tunedmodels"]
  verbs: ["patch"]
- apiGroups: ["kubetune.dev"]
  resources: ["tunedmodels/status", "finetuningtasks/status"]
  verbs: ["patch"]
- apiGroups: ["kubetune.dev"]
  resources: ["finetuningtasks/finalizers"]
  verbs: ["update"]
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["list", "watch", "create", "delete"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
  {{- with .Values.rbac.secretNames }}
  resourceNames: {{ toJson . }}
  {{- end }}
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "list"]
{{- end }}

{{/*
Cluster-scoped reads kopf needs in either mode: CRDs (to find its resources and notice
them being installed later) and, in namespaced mode, Namespaces (to notice a watched
namespace being created or deleted). Neither reveals more than names and schemas.
*/}}
{{- define "kubetune.discoveryRules" -}}
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["list", "watch"]
{{- if include "kubetune.namespaced" . }}
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["list", "watch"]
{{- end }}
{{- end }}
