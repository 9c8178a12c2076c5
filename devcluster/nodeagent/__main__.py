from devcluster.nodeagent.agent import main

main()
