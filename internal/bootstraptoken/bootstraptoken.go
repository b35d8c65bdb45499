// Package bootstraptoken creates and deletes kubeadm-style bootstrap tokens (Secrets of type
// bootstrap.kubernetes.io/token in kube-system) with k8s.io/cluster-bootstrap's constants, generator and
// validation. The boot server mints one per machine boot with it; the lab's control plane uses it too.
package bootstraptoken

import (
	"context"
	"fmt"
	"regexp"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	bootstrapapi "k8s.io/cluster-bootstrap/token/api"
	bootstraputil "k8s.io/cluster-bootstrap/token/util"
)

// DefaultGroup is the extra group kubeadm gives node-join tokens; kubeadm's RBAC bindings name it.
const DefaultGroup = "system:bootstrappers:kubeadm:default-node-token"

// PxejoinGroup is the extra group of the boot server's machine tokens. No kubeadm binding names it
// (kubeadm:node-autoapprove-bootstrap binds DefaultGroup), so the controller manager never approves
// their CSRs: the boot server's approver does, for the node name each token was minted for.
const PxejoinGroup = "system:bootstrappers:pxejoin"

// Options describe a token to create.
type Options struct {
	// TTL is the token's lifetime; the token cleaner deletes it afterwards. Zero means 24h (kubeadm's default).
	TTL time.Duration
	// Description is stored in the Secret; say what the token is for (e.g. the machine it was minted for).
	Description string
	// Groups are the extra groups; empty means DefaultGroup.
	Groups []string
	// Usages default to authentication and signing (both are needed for discovery + TLS bootstrap).
	Usages []string
	// Token, when set, is used instead of a generated one (it must be valid).
	Token string
	// Labels are added to the Secret (e.g. to find a machine's tokens).
	Labels map[string]string
	// Annotations are added to the Secret (e.g. what a label cannot hold).
	Annotations map[string]string
}

// Secret builds the Secret for token (id.secret) per opts, expiring at now+TTL.
func Secret(token string, opts Options, now time.Time) (*corev1.Secret, error) {
	id, secret, ok := strings.Cut(token, ".")
	if !ok || !bootstraputil.IsValidBootstrapToken(token) {
		return nil, fmt.Errorf("the bootstrap token is not of the form [a-z0-9]{6}.[a-z0-9]{16}")
	}
	ttl := opts.TTL
	if ttl <= 0 {
		ttl = 24 * time.Hour
	}
	groups := opts.Groups
	if len(groups) == 0 {
		groups = []string{DefaultGroup}
	}
	for _, g := range groups {
		if err := bootstraputil.ValidateBootstrapGroupName(g); err != nil {
			return nil, err
		}
	}
	usages := opts.Usages
	if len(usages) == 0 {
		usages = []string{"authentication", "signing"}
	}
	if err := bootstraputil.ValidateUsages(usages); err != nil {
		return nil, err
	}
	data := map[string][]byte{
		bootstrapapi.BootstrapTokenIDKey:          []byte(id),
		bootstrapapi.BootstrapTokenSecretKey:      []byte(secret),
		bootstrapapi.BootstrapTokenExpirationKey:  []byte(now.Add(ttl).UTC().Format(time.RFC3339)),
		bootstrapapi.BootstrapTokenExtraGroupsKey: []byte(strings.Join(groups, ",")),
	}
	if opts.Description != "" {
		data[bootstrapapi.BootstrapTokenDescriptionKey] = []byte(opts.Description)
	}
	for _, u := range usages {
		data[bootstrapapi.BootstrapTokenUsagePrefix+u] = []byte("true")
	}
	return &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{
			Name:        bootstraputil.BootstrapTokenSecretName(id),
			Namespace:   metav1.NamespaceSystem,
			Labels:      opts.Labels,
			Annotations: opts.Annotations,
		},
		Type: bootstrapapi.SecretTypeBootstrapToken,
		Data: data,
	}, nil
}

// Create generates (or takes opts.Token) and stores a bootstrap token; it returns "id.secret".
// A generated token that collides with an existing one is regenerated.
func Create(ctx context.Context, c kubernetes.Interface, opts Options) (string, error) {
	for attempt := 0; attempt < 5; attempt++ {
		tok := opts.Token
		if tok == "" {
			var err error
			if tok, err = bootstraputil.GenerateBootstrapToken(); err != nil {
				return "", err
			}
		}
		s, err := Secret(tok, opts, time.Now())
		if err != nil {
			return "", err
		}
		_, err = c.CoreV1().Secrets(metav1.NamespaceSystem).Create(ctx, s, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) && opts.Token == "" {
			continue
		}
		if err != nil {
			return "", fmt.Errorf("cannot create bootstrap token %s: %w", ID(tok), err)
		}
		return tok, nil
	}
	return "", fmt.Errorf("cannot create a bootstrap token: generated ids kept colliding")
}

// Delete removes the token with the given id (or full token); a missing token is not an error.
func Delete(ctx context.Context, c kubernetes.Interface, idOrToken string) error {
	id := ID(idOrToken)
	err := c.CoreV1().Secrets(metav1.NamespaceSystem).Delete(ctx, bootstraputil.BootstrapTokenSecretName(id), metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("cannot delete bootstrap token %s: %w", id, err)
	}
	return nil
}

// ID returns the public id part of a token ("abcdef" of "abcdef.0123456789abcdef").
func ID(token string) string {
	id, _, _ := strings.Cut(token, ".")
	return id
}

// Username is the user a token authenticates as: system:bootstrap:<id>.
func Username(token string) string { return bootstrapapi.BootstrapUserPrefix + ID(token) }

// tokenRE finds bootstrap-token-shaped strings (id.secret) in free text.
var tokenRE = regexp.MustCompile(`[a-z0-9]{6}\.[a-z0-9]{16}`)

// Scrub hides the secret half of anything shaped like a bootstrap token in s ("abcdef.<redacted>"),
// for text that may carry one: command lines, error messages, what a machine reports.
func Scrub(s string) string {
	if len(s) < 23 {
		return s
	}
	return tokenRE.ReplaceAllStringFunc(s, func(t string) string { return t[:6] + ".<redacted>" })
}
