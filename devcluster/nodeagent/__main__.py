"""`python -m devcluster.nodeagent`: the node agent that `devcluster up` starts."""

from devcluster.nodeagent.agent import main

main()
