// Command kubectl is kubectl from k8s.io/kubectl at the staging tag of the pinned Kubernetes
// release, for the kdps control-plane test harness.
package main

import (
	"os"

	"k8s.io/component-base/cli"
	"k8s.io/component-base/logs"
	"k8s.io/kubectl/pkg/cmd"
	"k8s.io/kubectl/pkg/cmd/util"

	// Registers the client-go credential plugins (exec, oidc) kubeconfigs may name.
	_ "k8s.io/client-go/plugin/pkg/client/auth"
)

func main() {
	// Verbosity must be known before the command is built: building it already logs
	// (plugin discovery, kuberc parsing), and flag parsing happens only inside cli.Run*.
	_, _ = logs.GlogSetter(cmd.GetLogVerbosity(os.Args))
	command := cmd.NewDefaultKubectlCommand()
	if err := cli.RunNoErrOutput(command); err != nil {
		util.CheckErr(err)
	}
}
