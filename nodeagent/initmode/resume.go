package initmode

import (
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"k8s.io/client-go/tools/clientcmd"
	certutil "k8s.io/client-go/util/cert"

	"github.com/pxejoin/pxejoin/internal/diskspec"
	"github.com/pxejoin/pxejoin/internal/pubkeypin"
	"github.com/pxejoin/pxejoin/nodeagent/nodefiles"
)

// ResumeMargin is how long the kubelet's client certificate must stay valid for a boot to resume:
// a certificate in its last minutes would expire before the kubelet could rotate it.
const ResumeMargin = 5 * time.Minute

// CheckResume decides whether the node state under root (the persistent disk's) lets this boot
// resume without a join: kubelet.conf and its client certificate exist, the certificate is signed by
// kubelet.conf's CA and valid for at least ResumeMargin, and the CA matches one of pins (the
// cluster's, from pxejoin.cahash; no pins: not checked). It returns what it found and, when it
// cannot resume, an error saying why the node joins again.
func CheckResume(root string, pins []string, now time.Time) (string, error) {
	kc, err := clientcmd.LoadFromFile(filepath.Join(root, nodefiles.KubeletConf))
	if os.IsNotExist(err) {
		return "", skipResume(diskspec.ResumeNoCredentials, "no %s on the disk: joining (first boot)", nodefiles.KubeletConf)
	}
	if err != nil {
		return "", skipResume(diskspec.ResumeInvalid, "%s on the disk is unreadable (%v): joining again", nodefiles.KubeletConf, err)
	}
	ctx := kc.Contexts[kc.CurrentContext]
	if ctx == nil || kc.Clusters[ctx.Cluster] == nil || kc.AuthInfos[ctx.AuthInfo] == nil {
		return "", skipResume(diskspec.ResumeInvalid, "%s on the disk has no current context with a cluster and a user: joining again", nodefiles.KubeletConf)
	}
	cas, err := certutil.ParseCertsPEM(kc.Clusters[ctx.Cluster].CertificateAuthorityData)
	if err != nil {
		return "", skipResume(diskspec.ResumeInvalid, "%s on the disk has no CA certificate (%v): joining again", nodefiles.KubeletConf, err)
	}
	caPin := pubkeypin.Hash(cas[0])
	if len(pins) > 0 {
		set, err := pubkeypin.NewSet(pins...)
		if err != nil {
			return "", fmt.Errorf("pxejoin.cahash: %w", err)
		}
		if set.CheckAny(cas) != nil {
			return "", skipResume(diskspec.ResumeOtherCluster, "credentials belong to another cluster (CA %s is not this cluster's): joining again", caPin)
		}
	}
	certPath := kc.AuthInfos[ctx.AuthInfo].ClientCertificate
	if certPath == "" {
		certPath = nodefiles.KubeletClientCurrent
	}
	b, err := os.ReadFile(filepath.Join(root, certPath))
	if err != nil {
		return "", skipResume(diskspec.ResumeInvalid, "the kubelet's client certificate %s is missing on the disk: joining again", certPath)
	}
	certs, err := certutil.ParseCertsPEM(b)
	if err != nil {
		return "", skipResume(diskspec.ResumeInvalid, "the kubelet's client certificate %s is unreadable (%v): joining again", certPath, err)
	}
	cert := certs[0]
	if !signedBy(cert, cas) {
		return "", skipResume(diskspec.ResumeInvalid, "the kubelet's client certificate %s was not issued by kubelet.conf's CA %s: joining again", certPath, caPin)
	}
	switch {
	case !now.Before(cert.NotAfter):
		return "", skipResume(diskspec.ResumeExpired, "the kubelet's client certificate expired at %s: joining again", cert.NotAfter.UTC().Format(time.RFC3339))
	case now.Add(ResumeMargin).After(cert.NotAfter):
		return "", skipResume(diskspec.ResumeExpired, "the kubelet's client certificate expires at %s, within %s: joining again", cert.NotAfter.UTC().Format(time.RFC3339), ResumeMargin)
	}
	pinned := "not pinned (no pxejoin.cahash)"
	if len(pins) > 0 {
		pinned = "this cluster's"
	}
	return fmt.Sprintf("%s valid until %s; CA %s %s", cert.Subject.CommonName,
		cert.NotAfter.UTC().Format(time.RFC3339), caPin, pinned), nil
}

func signedBy(cert *x509.Certificate, cas []*x509.Certificate) bool {
	for _, ca := range cas {
		if cert.CheckSignatureFrom(ca) == nil {
			return true
		}
	}
	return false
}

// skipResume is CheckResume's answer when the node joins again: the class (diskspec.Resume*) the
// boot server reads back, then why.
func skipResume(class, format string, args ...any) error {
	return errors.New(diskspec.ResumeSkipped(class, fmt.Sprintf(format, args...)))
}
