# Sourced by the GPU scripts: puts the CUDA toolkit's and the nvidia-* Python wheels' library
# folders (NVRTC, cuBLAS) on LD_LIBRARY_PATH, where the binary's own search also looks.
for d in /usr/local/cuda/lib64 $(python3 -c 'import nvidia,os;print(" ".join(os.path.join(p,"cu13","lib") for p in nvidia.__path__))' 2>/dev/null); do
    [ -d "$d" ] && export LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
done
